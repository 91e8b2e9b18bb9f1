//! What the fuzz target (`fuzz/fuzz_targets/header.rs`) does with each input, shared with the test
//! that replays its committed corpus on stable Rust (`tests/fuzz_corpus.rs`). docs/SECURITY.md says
//! how to run it.

use crate::{Header, Reader};

/// Reads `data` every way a reader can: as a whole file (prefix, header, layout, length, then each
/// leaf's bytes and lookup by path, and the tree and metadata decoded), and as a bare header, both
/// from the start and past a prefix. Any outcome but a panic, a hang or unbounded memory is fine.
#[doc(hidden)]
pub fn exercise(data: &[u8]) {
    if let Ok(reader) = Reader::new(data) {
        let header = reader.header();
        for (i, leaf) in header.leaves.iter().enumerate() {
            let _ = reader.leaf_bytes(i);
            let _ = reader.find(&leaf.path);
        }
        let _ = header.tree.decode();
        if let Some(metadata) = &header.metadata {
            let _ = metadata.decode();
        }
        let _ = reader.verify();
    }
    let _ = Header::decode_validated(data);
    if let Some(rest) = data.get(crate::PREFIX_LEN..) {
        let _ = Header::decode_validated(rest);
    }
}
