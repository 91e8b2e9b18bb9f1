//! Writing files with `assemble*` and reading them back with `Reader` / `MappedFile`.

mod common;

use common::*;
use eqx_msg_core::{
    assemble, assemble_into, checksum, layout, total_len, Error, Frame, LeafKind, MappedFile,
    Reader,
};
use rmpv::Value;

#[test]
fn assemble_then_read() {
    let h = enc(&good_header());
    let leaves = good_leaves();
    let file = assemble(&h, &as_refs(&leaves)).unwrap();
    assert_eq!(file.len() as u64, total_len(&h).unwrap());

    let r = Reader::new(&file).unwrap();
    // The header written is the one given, its map extended by the two checksum entries.
    let written = &file[r.header_range()];
    assert_eq!(written[1..h.len()], h[1..]);
    let blob = 4 * r.header().leaves.len();
    assert_eq!(written.len(), h.len() + 12 + 2 + blob + checksum::SEAL_LEN);
    assert_eq!(r.data_start() % 64, 0);
    assert_eq!(r.data_start(), (16 + written.len()).div_ceil(64) * 64);
    r.verify().unwrap();
    assert_eq!(r.leaf_bytes(0), leaves[0].as_deref());
    assert_eq!(r.leaf_bytes(1), leaves[1].as_deref());
    assert_eq!(r.leaf_bytes(2), None);
    assert_eq!(r.leaf_bytes(3), None);
    assert_eq!(r.header().leaves[2].kind, LeafKind::Abstract);
    // Padding after the header and between leaves is zero.
    assert!(file[16 + written.len()..r.data_start()]
        .iter()
        .all(|&b| b == 0));
    assert!(r.data()[12..64].iter().all(|&b| b == 0));
    // A streaming writer's front, sealed with the leaves' checksums, is the front of the file.
    let crcs: Vec<u32> = leaves
        .iter()
        .map(|l| l.as_deref().map_or(0, checksum::crc32c))
        .collect();
    let front = Frame::new(&h).unwrap().front(&crcs).unwrap();
    assert_eq!(front, &file[..r.data_start()]);
}

#[test]
fn assemble_checks_the_leaves_before_allocating_the_file() {
    // A valid header for a 64 TiB data section with no leaves: the wrong leaf list is the error,
    // not an allocation of 64 TiB (which would abort the process).
    let h = enc(&header(64, 1 << 46, vec![]));
    let one = [1u8; 8];
    let err = assemble(&h, &[Some(&one[..])]).unwrap_err();
    assert!(matches!(err, Error::LeafCount { .. }), "{err}");
    // (With the right, empty, leaf list the allocation fails as `Error::AllocFailed` on a normal
    // machine; not run here, since with overcommit on it would write 64 TiB of zeros.)
}

#[test]
fn assemble_into_overwrites_garbage() {
    let h = enc(&good_header());
    let leaves = good_leaves();
    let want = assemble(&h, &as_refs(&leaves)).unwrap();
    let mut out = vec![0xEE; want.len()];
    assemble_into(&h, &as_refs(&leaves), &mut out).unwrap();
    assert_eq!(out, want);

    let mut short = vec![0; want.len() - 1];
    let e = assemble_into(&h, &as_refs(&leaves), &mut short).unwrap_err();
    assert_eq!(e.kind(), "LayoutError");
}

#[test]
fn leaf_buffer_errors_name_the_leaf() {
    let h = enc(&good_header());
    let mut leaves = good_leaves();
    leaves[1].as_mut().unwrap().push(0);
    let e = assemble(&h, &as_refs(&leaves)).unwrap_err();
    assert!(
        matches!(e, Error::LeafLength { ref leaf, expected: 12, actual: 13 } if leaf.path == ".b")
    );
    assert!(e.to_string().contains("\".b\""));

    let mut leaves = good_leaves();
    leaves[0] = None;
    assert_eq!(
        assemble(&h, &as_refs(&leaves)).unwrap_err().kind(),
        "LayoutError"
    );
    let mut leaves = good_leaves();
    leaves[2] = Some(vec![]);
    assert_eq!(
        assemble(&h, &as_refs(&leaves)).unwrap_err().kind(),
        "LayoutError"
    );
    let leaves = good_leaves();
    let e = assemble(&h, &as_refs(&leaves[..2])).unwrap_err();
    assert!(matches!(
        e,
        Error::LeafCount {
            expected: 3,
            actual: 2
        }
    ));
}

/// A data section large enough to be copied by several threads, with leaves out of record order
/// and of awkward sizes, compared against a byte-by-byte reference.
#[test]
fn parallel_copy_matches_reference() {
    let sizes: [u64; 6] = [3 << 20, 1, 0, 5 << 20, 777, (2 << 20) + 13];
    let alignment = 4096;
    let (offsets, data_nbytes) = layout::plan(&sizes, alignment).unwrap();
    // Records in reverse order: offsets no longer increase with the record index.
    let order: Vec<usize> = (0..sizes.len()).rev().collect();
    let records = order
        .iter()
        .map(|&i| {
            leaf(
                &format!("[{i}]"),
                "numpy",
                "uint8",
                &[sizes[i]],
                Some((offsets[i], sizes[i])),
            )
        })
        .collect();
    let h = enc(&header(alignment, data_nbytes, records));
    let bufs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| (j as u8).wrapping_add(i as u8 * 40) | 1)
                .collect()
        })
        .collect();
    let leaves: Vec<Option<&[u8]>> = order.iter().map(|&i| Some(&bufs[i][..])).collect();

    let file = assemble(&h, &leaves).unwrap();
    let frame = Frame::new(&h).unwrap();
    let d = frame.data_start() as usize;
    let crcs: Vec<u32> = order.iter().map(|&i| checksum::crc32c(&bufs[i])).collect();
    let mut want = frame.front(&crcs).unwrap();
    want.resize(d + data_nbytes as usize, 0);
    for (i, b) in bufs.iter().enumerate() {
        let o = d + offsets[i] as usize;
        want[o..o + b.len()].copy_from_slice(b);
    }
    assert!(file == want, "parallel assemble differs from the reference");

    let r = Reader::new(&file).unwrap();
    for (rec, &i) in order.iter().enumerate() {
        assert_eq!(r.leaf_bytes(rec).unwrap(), &bufs[i][..]);
    }
}

#[test]
fn empty_tree() {
    let h = enc(&header(64, 0, vec![]));
    let file = assemble(&h, &[]).unwrap();
    assert_eq!(file.len() % 64, 0);
    let r = Reader::new(&file).unwrap();
    assert!(r.header().leaves.is_empty());
    assert!(r.data().is_empty());
}

#[test]
fn zero_size_leaves() {
    let records = vec![
        leaf(".e", "numpy", "float32", &[0, 4], Some((0, 0))),
        leaf(".s", "numpy_scalar", "int8", &[], Some((0, 1))),
        leaf(".z", "jax", "int4", &[0], Some((64, 0))),
    ];
    let h = enc(&header(64, 64, records));
    let leaves: Vec<Option<&[u8]>> = vec![Some(&[]), Some(&[7]), Some(&[])];
    let file = assemble(&h, &leaves).unwrap();
    let r = Reader::new(&file).unwrap();
    assert_eq!(r.leaf_bytes(0), Some(&[][..]));
    assert_eq!(r.leaf_bytes(1), Some(&[7][..]));
    assert_eq!(r.leaf_bytes(2), Some(&[][..]));
}

#[test]
fn metadata_and_tree_are_kept() {
    let v = with_root(good_header(), "metadata", Value::Binary(vec![1, 2, 3]));
    let file = assemble(&enc(&v), &as_refs(&good_leaves())).unwrap();
    let r = Reader::new(&file).unwrap();
    let meta = r.header().metadata.unwrap().decode().unwrap();
    assert_eq!(meta, Value::Binary(vec![1, 2, 3]));
    assert!(r.header().tree.is_map());
}

#[test]
fn mapped_file() {
    let dir = std::env::temp_dir().join(format!("eqx_msg_core_test_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("good.eqx");
    let file = assemble(&enc(&good_header()), &as_refs(&good_leaves())).unwrap();
    std::fs::write(&path, &file).unwrap();
    let m = MappedFile::open(&path).unwrap();
    let r = m.reader().unwrap();
    assert_eq!(r.header().leaves.len(), 3);
    assert_eq!(r.leaf_bytes(1), good_leaves()[1].as_deref());

    let empty = dir.join("empty.eqx");
    std::fs::write(&empty, b"").unwrap();
    let m = MappedFile::open(&empty).unwrap();
    assert_eq!(m.reader().unwrap_err().kind(), "LengthError");
    assert!(MappedFile::open(dir.join("missing.eqx")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
