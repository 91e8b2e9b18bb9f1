//! Checksums (FORMAT.md section 9): every single flipped bit of a written file is found, damaged
//! leaves are named, and files without checksums still read.

mod common;

use common::*;
use eqx_msg_core::{assemble, checksum, Error, ErrorKind, Reader, StreamVerifier};

/// A small file of the current writer: three leaves, one abstract.
fn file() -> Vec<u8> {
    assemble(&enc(&good_header()), &as_refs(&good_leaves())).unwrap()
}

/// Opening and verifying, as one verdict.
fn check(bytes: &[u8]) -> Result<(), Error> {
    Reader::new(bytes)?.verify()
}

#[test]
fn a_written_file_verifies() {
    check(&file()).unwrap();
}

#[test]
fn every_single_flipped_bit_is_found() {
    let good = file();
    let header_end = Reader::new(&good).unwrap().header_range().end;
    for byte in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            let err = check(&bad).expect_err(&format!("byte {byte} bit {bit} went unnoticed"));
            // In the header or after it, damage is a checksum error (before it, in the prefix,
            // the magic, version or length is wrong first).
            if byte >= 16 && byte < header_end - checksum::SEAL_LEN {
                assert_eq!(
                    err.kind(),
                    ErrorKind::Checksum,
                    "byte {byte} bit {bit}: {err}"
                );
            }
            if byte >= header_end {
                assert_eq!(
                    err.kind(),
                    ErrorKind::Checksum,
                    "byte {byte} bit {bit}: {err}"
                );
            }
        }
    }
}

#[test]
fn verify_names_every_damaged_leaf() {
    let mut bad = file();
    let r = Reader::new(&bad).unwrap();
    let d = r.data_start();
    let starts: Vec<usize> = (0..2)
        .map(|i| d + r.header().leaves[i].offset.unwrap() as usize)
        .collect();
    drop(r);
    for s in starts {
        bad[s] ^= 0x80;
    }
    let err = check(&bad).unwrap_err();
    match &err {
        Error::LeafChecksums { leaves } => {
            let paths: Vec<&str> = leaves.iter().map(|l| l.path.as_str()).collect();
            assert_eq!(paths.len(), 2, "{err}");
        }
        other => panic!("expected LeafChecksums, got {other}"),
    }
    assert!(err.to_string().contains("2 leaves"), "{err}");
}

#[test]
fn files_without_checksums_read_but_do_not_verify() {
    let new = file();
    let data = Reader::new(&new).unwrap().data().to_vec();
    let old = raw_file(&enc(&good_header()), 64, &data);
    let r = Reader::new(&old).unwrap();
    assert!(r.header().checksums.is_none());
    assert!(matches!(r.verify(), Err(Error::NoChecksums)));
}

#[test]
fn nonzero_header_padding_is_refused_at_open() {
    let mut bad = file();
    let r = Reader::new(&bad).unwrap();
    let (end, d) = (r.header_range().end, r.data_start());
    drop(r);
    assert!(d > end, "the test file needs header padding");
    bad[d - 1] = 1;
    let err = Reader::new(&bad).unwrap_err();
    assert!(
        matches!(err, Error::NonzeroPadding { offset, .. } if offset == d as u64 - 1),
        "{err}"
    );
}

#[test]
fn checksum_fields_must_be_whole_and_last() {
    // leaf_crc32c without header_crc32c, a blob of the wrong length, and header_crc32c not last.
    let n = 3;
    let cases = [
        with_root(
            good_header(),
            "leaf_crc32c",
            rmpv::Value::Binary(vec![0; 4 * n]),
        ),
        with_root(
            with_root(
                good_header(),
                "header_crc32c",
                rmpv::Value::from(0xffff_ffffu32),
            ),
            "leaf_crc32c",
            rmpv::Value::Binary(vec![0; 4 * n]),
        ),
        with_root(
            with_root(
                good_header(),
                "leaf_crc32c",
                rmpv::Value::Binary(vec![0; 4]),
            ),
            "header_crc32c",
            rmpv::Value::from(0xffff_ffffu32),
        ),
    ];
    for h in cases {
        let err = eqx_msg_core::Header::decode(&enc(&h)).unwrap_err();
        assert!(matches!(err, Error::BadChecksumField { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Header);
    }
}

/// Verifying a file fed in chunks of `chunk` bytes, as a reader of a source that is not mapped
/// does (the header read and checked first).
fn check_streamed(bytes: &[u8], chunk: usize) -> Result<(), Error> {
    let head = eqx_msg_core::parse_head(bytes, bytes.len() as u64)?;
    head.check_padding(bytes)?;
    let mut verifier = StreamVerifier::new(&head.header, head.data_start as u64)?;
    for piece in bytes[head.data_start..].chunks(chunk) {
        verifier.feed(piece)?;
    }
    assert_eq!(verifier.remaining(), 0);
    verifier.finish(&head.header.leaves)
}

#[test]
fn a_streamed_verify_gives_the_verdict_of_the_mapped_one_for_every_flipped_bit() {
    let good = file();
    for chunk in [1, 7, 64, 1 << 20] {
        check_streamed(&good, chunk).unwrap();
    }
    for byte in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            let mapped = check(&bad).expect_err("mapped").to_string();
            for chunk in [1, 13, 1 << 20] {
                let streamed = check_streamed(&bad, chunk)
                    .expect_err(&format!("byte {byte} bit {bit} in chunks of {chunk}"));
                assert_eq!(streamed.to_string(), mapped, "byte {byte} bit {bit}");
            }
        }
    }
}

#[test]
fn a_streamed_verify_refuses_too_few_or_too_many_bytes() {
    let good = file();
    let head = eqx_msg_core::parse_head(&good, good.len() as u64).unwrap();
    let data = &good[head.data_start..];
    let mut short = StreamVerifier::new(&head.header, head.data_start as u64).unwrap();
    short.feed(&data[..data.len() - 1]).unwrap();
    assert_eq!(short.remaining(), 1);
    assert_eq!(
        short.finish(&head.header.leaves).unwrap_err().kind(),
        ErrorKind::Layout
    );
    let mut long = StreamVerifier::new(&head.header, head.data_start as u64).unwrap();
    let mut more = data.to_vec();
    more.push(0);
    assert_eq!(long.feed(&more).unwrap_err().kind(), ErrorKind::Layout);
}

#[test]
fn a_streamed_verify_counts_the_data_section_not_its_last_segment() {
    // An empty leaf inside the last leaf's bytes: segments sorted by start end with the empty one.
    let leaves = vec![
        leaf(".a", "numpy", "float32", &[32], Some((0, 128))),
        leaf(".z", "numpy", "float32", &[0], Some((64, 0))),
    ];
    let data: Vec<u8> = (0..128u8).collect();
    let file = assemble(
        &enc(&header(64, 128, leaves)),
        &[Some(&data[..]), Some(&[][..])],
    )
    .unwrap();
    check(&file).unwrap();
    let head = eqx_msg_core::parse_head(&file, file.len() as u64).unwrap();
    let verifier = StreamVerifier::new(&head.header, head.data_start as u64).unwrap();
    assert_eq!(verifier.remaining(), 128);
    for chunk in [1, 64, 1 << 20] {
        check_streamed(&file, chunk).unwrap();
    }
}
