//! A table of damaged and malicious inputs: each must be rejected with the right error class,
//! without panicking and without allocating according to an unchecked length.

mod common;

use common::*;
use eqx_msg_core::{assemble, Header, Reader, MAX_DEPTH, MAX_HEADER_LEN};
use rmpv::Value;

/// A valid file.
fn good() -> Vec<u8> {
    assemble(&enc(&good_header()), &as_refs(&good_leaves())).unwrap()
}

/// A file around a header value, with a data section of `data_nbytes` bytes of 0x55.
fn file_with(v: &Value) -> Vec<u8> {
    let h = enc(v);
    let n = v
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("data_nbytes")))
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(0);
    raw_file(&h, 64, &vec![0x55; n.min(1 << 20) as usize])
}

/// A file around raw header bytes with no data section.
fn file_raw(h: &[u8]) -> Vec<u8> {
    raw_file(h, 64, &[])
}

fn with_header_len(mut f: Vec<u8>, len: u64) -> Vec<u8> {
    f[8..16].copy_from_slice(&len.to_le_bytes());
    f
}

/// msgpack: `{"metadata": [[...[nil]...]]}` with `n` nested containers in all (the map is one).
fn nested_arrays(n: usize) -> Vec<u8> {
    let mut b = vec![0x81, 0xa8];
    b.extend_from_slice(b"metadata");
    b.extend(std::iter::repeat_n(0x91u8, n - 1));
    b.push(0xc0);
    b
}

/// msgpack: `{"metadata": {"k": {"k": ... nil}}}` with `n` nested maps in all.
fn nested_maps(n: usize) -> Vec<u8> {
    let mut b = vec![0x81, 0xa8];
    b.extend_from_slice(b"metadata");
    for _ in 0..n - 1 {
        b.extend_from_slice(&[0x81, 0xa1, b'k']);
    }
    b.push(0xc0);
    b
}

fn leaf_edit(i: usize, key: &str, val: Value) -> Vec<u8> {
    file_with(&with_leaf(good_header(), i, key, val))
}

fn root_edit(key: &str, val: Value) -> Vec<u8> {
    file_with(&with_root(good_header(), key, val))
}

fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let g = good();
    let mut c = vec![
        ("empty file", vec![], "LengthError"),
        ("wrong magic", [b"EQXMSX", &g[6..]].concat(), "MagicError"),
        ("short wrong magic", b"PK\x03".to_vec(), "MagicError"),
        ("truncated prefix", g[..10].to_vec(), "LengthError"),
        ("magic only", g[..6].to_vec(), "LengthError"),
        ("truncated header", g[..40].to_vec(), "LengthError"),
        ("prefix only", g[..16].to_vec(), "LengthError"),
        (
            "header length past the file",
            with_header_len(g.clone(), g.len() as u64),
            "LengthError",
        ),
        (
            "header length u64::MAX",
            with_header_len(g.clone(), u64::MAX),
            "LimitError",
        ),
        (
            "header length over the cap",
            with_header_len(g.clone(), MAX_HEADER_LEN + 1),
            "LimitError",
        ),
        (
            "header length short",
            with_header_len(g.clone(), 20),
            "HeaderError",
        ),
        (
            "header length zero",
            with_header_len(g.clone(), 0),
            "HeaderError",
        ),
        ("trailing bytes", [&g[..], &[0]].concat(), "LengthError"),
        ("truncated data", g[..g.len() - 1].to_vec(), "LengthError"),
        (
            "prefix version 2",
            {
                let mut f = g.clone();
                f[6] = 2;
                f
            },
            "VersionError",
        ),
        (
            "prefix version 0",
            {
                let mut f = g.clone();
                f[6] = 0;
                f
            },
            "VersionError",
        ),
        (
            "header version 2",
            root_edit("version", Value::from(2)),
            "VersionError",
        ),
        (
            "header version negative",
            root_edit("version", Value::from(-1)),
            "HeaderError",
        ),
        (
            "format wrong",
            root_edit("format", Value::from("safetensors")),
            "HeaderError",
        ),
        (
            "format not str",
            root_edit("format", Value::from(1)),
            "HeaderError",
        ),
        (
            "header is an array",
            file_raw(&enc(&Value::Array(vec![]))),
            "HeaderError",
        ),
        ("header is nil", file_raw(&[0xc0]), "HeaderError"),
        ("header is empty", file_raw(&[]), "HeaderError"),
        (
            "header map truncated",
            file_raw(&[0x85, 0xa1, b'a']),
            "HeaderError",
        ),
        (
            "str claims 4 GiB",
            file_raw(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b'x']),
            "HeaderError",
        ),
        (
            "bin claims 4 GiB",
            file_raw(&[0x91, 0xc6, 0xff, 0xff, 0xff, 0xff]),
            "HeaderError",
        ),
        (
            "array claims 4G items",
            file_raw(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]),
            "HeaderError",
        ),
        (
            "map claims 4G entries",
            file_raw(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            "HeaderError",
        ),
        (
            "two values in header",
            file_raw(&[&enc(&good_header())[..], &[0xc0]].concat()),
            "HeaderError",
        ),
        (
            "depth bomb, 10000 arrays",
            file_raw(&nested_arrays(10_000)),
            "LimitError",
        ),
        (
            "depth bomb, 10000 maps",
            file_raw(&nested_maps(10_000)),
            "LimitError",
        ),
        (
            "depth just over the limit",
            file_raw(&nested_arrays(MAX_DEPTH + 1)),
            "LimitError",
        ),
        (
            "depth at the limit, no format",
            file_raw(&nested_arrays(MAX_DEPTH)),
            "HeaderError",
        ),
        (
            "non-string root key",
            file_with(&{
                let mut v = good_header();
                if let Value::Map(m) = &mut v {
                    m.push((Value::from(7), Value::Nil));
                }
                v
            }),
            "HeaderError",
        ),
        (
            "bin root key",
            file_with(&{
                let mut v = good_header();
                if let Value::Map(m) = &mut v {
                    m.push((Value::Binary(b"x".to_vec()), Value::Nil));
                }
                v
            }),
            "HeaderError",
        ),
        (
            "invalid UTF-8 root key",
            {
                // fixmap of 8 entries -> 9, plus the entry {"\xff": nil}.
                let mut h = enc(&good_header());
                assert_eq!(h[0], 0x88);
                h[0] = 0x89;
                h.extend_from_slice(&[0xa1, 0xff, 0xc0]);
                raw_file(&h, 64, &[0x55; 76])
            },
            "HeaderError",
        ),
        (
            "invalid UTF-8 path",
            {
                let mut h = enc(&good_header());
                let at = h.windows(3).position(|w| w == b"\xa2.a").unwrap();
                h[at + 2] = 0xff;
                raw_file(&h, 64, &[0x55; 76])
            },
            "HeaderError",
        ),
        (
            "duplicate root key",
            file_with(&{
                let mut v = good_header();
                if let Value::Map(m) = &mut v {
                    m.push((Value::from("alignment"), Value::from(64)));
                }
                v
            }),
            "HeaderError",
        ),
        (
            "duplicate leaf key",
            file_with(&{
                let mut v = good_header();
                if let Value::Map(m) = &mut v {
                    if let Some((_, Value::Array(l))) =
                        m.iter_mut().find(|(k, _)| k.as_str() == Some("leaves"))
                    {
                        if let Value::Map(r) = &mut l[0] {
                            r.push((Value::from("offset"), Value::from(0)));
                        }
                    }
                }
                v
            }),
            "HeaderError",
        ),
        (
            "leaves not an array",
            root_edit("leaves", Value::from("x")),
            "HeaderError",
        ),
        (
            "leaf not a map",
            root_edit("leaves", Value::Array(vec![Value::from(1)])),
            "HeaderError",
        ),
        (
            "missing data_nbytes",
            file_with(&without_root(good_header(), "data_nbytes")),
            "HeaderError",
        ),
        (
            "missing leaf nbytes",
            file_with(&without_leaf(good_header(), 1, "nbytes")),
            "HeaderError",
        ),
        (
            "unknown kind",
            leaf_edit(0, "kind", Value::from("pickle")),
            "HeaderError",
        ),
        (
            "key without key_impl",
            leaf_edit(0, "kind", Value::from("key")),
            "HeaderError",
        ),
        (
            "weak_type not bool",
            leaf_edit(0, "weak_type", Value::from(1)),
            "HeaderError",
        ),
        (
            "negative offset",
            leaf_edit(0, "offset", Value::from(-64)),
            "HeaderError",
        ),
        (
            "float offset",
            leaf_edit(0, "offset", Value::F64(0.0)),
            "HeaderError",
        ),
        (
            "negative dim",
            leaf_edit(0, "shape", Value::Array(vec![Value::from(-3)])),
            "HeaderError",
        ),
        (
            "unknown dtype",
            leaf_edit(0, "dtype", Value::from("float128")),
            "DTypeError",
        ),
        (
            "dtype object",
            leaf_edit(0, "dtype", Value::from("object")),
            "DTypeError",
        ),
        (
            "misaligned offset",
            leaf_edit(1, "offset", Value::from(32)),
            "LayoutError",
        ),
        (
            "overlapping leaves",
            leaf_edit(1, "offset", Value::from(0)),
            "LayoutError",
        ),
        (
            "leaf past the data section",
            root_edit("data_nbytes", Value::from(70)),
            "LayoutError",
        ),
        (
            "offset + nbytes overflows",
            leaf_edit(1, "offset", Value::from(u64::MAX - 63)),
            "LayoutError",
        ),
        (
            "nbytes too small",
            leaf_edit(0, "nbytes", Value::from(11)),
            "LayoutError",
        ),
        (
            "nbytes too big",
            leaf_edit(0, "nbytes", Value::from(13)),
            "LayoutError",
        ),
        (
            "shape product overflow",
            leaf_edit(0, "shape", Value::Array(vec![Value::from(1u64 << 32); 3])),
            "LayoutError",
        ),
        (
            "byte length overflow",
            leaf_edit(0, "shape", Value::Array(vec![Value::from(u64::MAX / 2)])),
            "LayoutError",
        ),
        (
            "65 dims",
            leaf_edit(0, "shape", Value::Array(vec![Value::from(1); 65])),
            "LimitError",
        ),
        (
            "abstract with offset",
            leaf_edit(2, "offset", Value::from(0)),
            "LayoutError",
        ),
        (
            "abstract with nbytes",
            leaf_edit(2, "nbytes", Value::from(0)),
            "LayoutError",
        ),
        (
            "alignment 96",
            root_edit("alignment", Value::from(96)),
            "LayoutError",
        ),
        (
            "alignment 32",
            root_edit("alignment", Value::from(32)),
            "LayoutError",
        ),
        (
            "alignment 0",
            root_edit("alignment", Value::from(0)),
            "LayoutError",
        ),
        (
            "alignment 2^21",
            root_edit("alignment", Value::from(1u64 << 21)),
            "LayoutError",
        ),
        (
            "alignment 2^63",
            root_edit("alignment", Value::from(1u64 << 63)),
            "LayoutError",
        ),
        (
            "data_nbytes u64::MAX",
            root_edit("data_nbytes", Value::from(u64::MAX)),
            "LengthError",
        ),
        (
            "tree not a map",
            root_edit("tree", Value::from("x")),
            "HeaderError",
        ),
        (
            "writer not a map",
            root_edit("writer", Value::from(3)),
            "HeaderError",
        ),
    ];
    // A huge shape is fine for an abstract leaf, as long as its byte length fits.
    c.push((
        "abstract leaf, overflowing shape",
        leaf_edit(2, "shape", Value::Array(vec![Value::from(u64::MAX); 2])),
        "LayoutError",
    ));
    c
}

#[test]
fn every_attack_is_rejected_with_its_class() {
    for (name, bytes, kind) in cases() {
        match Reader::new(&bytes) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => {
                println!("{name:>32}: [{}] {e}", e.kind());
                assert_eq!(e.kind(), kind, "{name}: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

#[test]
fn the_good_file_is_accepted() {
    Reader::new(&good()).unwrap();
}

#[test]
fn a_nil_writer_counts_as_absent() {
    let file = root_edit("writer", Value::Nil);
    assert_eq!(Reader::new(&file).unwrap().header().writer, None);
}

#[test]
fn messages_say_where() {
    let e = Reader::new(&leaf_edit(1, "offset", Value::from(32))).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("leaf 1") && m.contains(".b") && m.contains("offset") && m.contains("32"),
        "{m}"
    );
    let e = Reader::new(&leaf_edit(1, "offset", Value::from(0))).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("\".a\"") && m.contains("\".b\"") && m.contains("overlaps"),
        "{m}"
    );
    let e = Reader::new(&leaf_edit(0, "dtype", Value::from("float128"))).unwrap_err();
    assert!(e.to_string().contains("float128") && e.to_string().contains("leaf 0"));
    let e = Reader::new(&file_raw(&[0x85, 0xa1, b'a'])).unwrap_err();
    assert!(e.to_string().contains("header byte"), "{e}");
    let g = good();
    let e = Reader::new(&g[..g.len() - 1]).unwrap_err();
    assert!(
        e.to_string().contains(&format!("{} bytes", g.len() - 1)),
        "{e}"
    );
}

#[test]
fn lone_headers_are_checked_the_same_way() {
    let e = Header::decode_validated(&nested_arrays(10_000)).unwrap_err();
    assert_eq!(e.kind(), "LimitError");
    let b = enc(&with_root(good_header(), "version", Value::from(2)));
    assert_eq!(Header::decode(&b).unwrap_err().kind(), "VersionError");
}

/// Every truncation and every single-bit flip of a valid file: no panics, and any accepted
/// file still has in-bounds leaves.
#[test]
fn truncations_and_bit_flips_never_panic() {
    let g = good();
    for n in 0..g.len() {
        assert!(Reader::new(&g[..n]).is_err(), "truncated to {n} accepted");
    }
    let mut f = g.clone();
    for i in 0..f.len() {
        for bit in 0..8 {
            f[i] ^= 1 << bit;
            if let Ok(r) = Reader::new(&f) {
                for j in 0..r.header().leaves.len() {
                    let _ = r.leaf_bytes(j);
                }
            }
            f[i] ^= 1 << bit;
        }
    }
}
