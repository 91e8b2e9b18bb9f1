//! Replays the fuzz target's committed corpus (`fuzz/corpus/header/`) on stable Rust, so every input
//! the fuzzer kept (and every crash it found, once committed there) stays a test.

use std::path::PathBuf;

#[test]
fn every_corpus_input_is_read_without_a_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/header");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        eqx_msg_core::fuzzing::exercise(&data);
        count += 1;
    }
    assert!(count >= 8, "the corpus holds {count} inputs");
}
