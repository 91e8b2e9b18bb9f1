//! The golden files in `tests/fixtures/` (one per writer generation, written by the Python package and
//! never rewritten), read with the core crate alone, as a reader in another language would read them.
//! `tests/golden.py` says what they hold.

use std::path::PathBuf;

use eqx_msg_core::{dtype, subbyte, Error, LeafKind, MappedFile};
use rmpv::Value;

fn golden_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eqx"))
        .filter(|path| !path.ends_with("v1_every_dtype.eqx")) // golden.every_dtype(), not tree()
        .collect();
    files.sort();
    files
}

#[test]
fn every_golden_file_reads_with_the_core_alone() {
    let files = golden_files();
    assert!(files.len() >= 2, "golden files: {files:?}");
    for path in files {
        let name = path.display().to_string();
        let file = MappedFile::open(&path).unwrap();
        let r = file.reader().unwrap(); // prefix, header, layout and length all checked
        let h = r.header();
        assert_eq!((h.version, h.alignment), (1, 64), "{name}");
        assert_eq!(h.leaves.len(), 39, "{name}");

        // golden.ramp((2, 4), float32): 0.25 steps from -1.0.
        let (i, leaf) = r.find("['jax']['float32']").unwrap();
        assert_eq!((leaf.kind, leaf.dtype.as_str()), (LeafKind::Jax, "float32"));
        assert_eq!(leaf.shape, [2, 4]);
        let values: Vec<f32> = r
            .leaf_bytes(i)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let want: Vec<f32> = (0..8).map(|k| k as f32 * 0.25 - 1.0).collect();
        assert_eq!(values, want, "{name}");

        // golden.ramp((3, 5), int4): -7..=7, two per byte, low nibble first.
        let (i, leaf) = r.find("['numpy']['int4']").unwrap();
        assert_eq!((leaf.kind, leaf.dtype.as_str()), (LeafKind::Numpy, "int4"));
        let packed = r.leaf_bytes(i).unwrap();
        assert_eq!(packed.len(), 8);
        let mut nibbles = [0u8; 15];
        subbyte::unpack(4, packed, 15, &mut nibbles).unwrap();
        let signed: Vec<i8> = nibbles.iter().map(|&n| ((n << 4) as i8) >> 4).collect();
        assert_eq!(signed, (-7..=7).collect::<Vec<i8>>(), "{name}");

        // jax.random.key(7): threefry key data [0, 7].
        let (i, leaf) = r.find("['key']").unwrap();
        assert_eq!(leaf.kind, LeafKind::Key);
        assert_eq!(leaf.key_impl.as_deref(), Some("threefry2x32"));
        assert_eq!(r.leaf_bytes(i).unwrap(), [0, 0, 0, 0, 7, 0, 0, 0]);

        let (_, weak) = r.find("['weak']").unwrap();
        assert!(weak.weak_type && weak.shape.is_empty());
        let (i, abstract_leaf) = r.find("['abstract']").unwrap();
        assert_eq!(abstract_leaf.kind, LeafKind::Abstract);
        assert_eq!(r.leaf_bytes(i), None);

        // Written with checksums since v1_checksums.eqx: every byte verifies; older files have none.
        if name.ends_with("v1_checksums.eqx") || name.ends_with("v1_static_names.eqx") {
            r.verify().unwrap();
        } else {
            assert!(matches!(r.verify(), Err(Error::NoChecksums)), "{name}");
        }

        let metadata = h.metadata.as_ref().unwrap().decode().unwrap();
        let step = metadata
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("step"))
            .map(|(_, v)| v.clone());
        assert_eq!(step, Some(Value::from(1200)), "{name}");
    }
}

#[test]
fn the_every_dtype_golden_file_holds_one_leaf_per_table_name() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/v1_every_dtype.eqx");
    let file = MappedFile::open(&path).unwrap();
    let r = file.reader().unwrap();
    let names: Vec<&str> = r.header().leaves.iter().map(|l| l.dtype.as_str()).collect();
    assert_eq!(names, dtype::names());
    for name in dtype::names() {
        let (i, leaf) = r.find(&format!("['{name}']")).unwrap();
        assert_eq!(
            (leaf.kind, leaf.shape.as_slice()),
            (LeafKind::Numpy, &[2u64, 3][..])
        );
        let nbytes = dtype::storage_nbytes(name, &leaf.shape).unwrap();
        assert_eq!(r.leaf_bytes(i).unwrap().len() as u64, nbytes, "{name}");
    }
    // golden.exact_values(6, "float8_e5m3fnu"): 0.5, 1, 2, 4, 0.5, 1. No sign bit, 5 exponent bits
    // biased by 15, 3 mantissa bits: 2^e is (e + 15) << 3.
    let (i, _) = r.find("['float8_e5m3fnu']").unwrap();
    assert_eq!(r.leaf_bytes(i).unwrap(), [112, 120, 128, 136, 112, 120]);
    // golden.exact_values(6, "int2"): -2, -1, 0, 1, -2, -1; four per byte, low bits first.
    let (i, _) = r.find("['int2']").unwrap();
    let mut crumbs = [0u8; 6];
    subbyte::unpack(2, r.leaf_bytes(i).unwrap(), 6, &mut crumbs).unwrap();
    assert_eq!(crumbs, [0b10, 0b11, 0b00, 0b01, 0b10, 0b11]);
}
