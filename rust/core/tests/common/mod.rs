//! Builders for test headers, shared by unit tests (via `#[path]`) and integration tests.
#![allow(dead_code)]

use rmpv::Value;

/// A msgpack map with string keys.
pub fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// Encodes a value with `rmpv::encode::write_value`.
pub fn enc(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("encoding to a Vec cannot fail");
    out
}

/// A leaf record.
pub fn leaf(
    path: &str,
    kind: &str,
    dtype: &str,
    shape: &[u64],
    bytes: Option<(u64, u64)>,
) -> Value {
    let mut e = vec![
        ("path", Value::from(path)),
        ("kind", Value::from(kind)),
        ("dtype", Value::from(dtype)),
        (
            "shape",
            Value::Array(shape.iter().map(|&d| Value::from(d)).collect()),
        ),
    ];
    if let Some((offset, nbytes)) = bytes {
        e.push(("offset", Value::from(offset)));
        e.push(("nbytes", Value::from(nbytes)));
    }
    map(e)
}

/// A header map with the given alignment, data length and leaf records.
pub fn header(alignment: u64, data_nbytes: u64, leaves: Vec<Value>) -> Value {
    let tree = map(vec![
        ("t", Value::from("list")),
        (
            "c",
            Value::Array((0..leaves.len()).map(Value::from).collect()),
        ),
    ]);
    map(vec![
        ("format", Value::from("eqx_msg")),
        ("version", Value::from(1)),
        ("alignment", Value::from(alignment)),
        ("data_nbytes", Value::from(data_nbytes)),
        ("leaves", Value::Array(leaves)),
        ("tree", tree),
        ("metadata", map(vec![("epoch", Value::from(3))])),
        ("writer", map(vec![("eqx_msg", Value::from("0.1.0"))])),
    ])
}

/// Three leaves: float32[3] at 0, int4[24] (12 bytes, weak) at 64, an abstract key; N = 76.
pub fn good_header() -> Value {
    let b = with_map(
        leaf(".b", "jax", "int4", &[24], Some((64, 12))),
        "weak_type",
        Value::from(true),
    );
    let c = with_map(
        leaf(".c", "abstract", "uint32", &[2], None),
        "key_impl",
        Value::from("threefry2x32"),
    );
    header(
        64,
        76,
        vec![leaf(".a", "numpy", "float32", &[3], Some((0, 12))), b, c],
    )
}

/// Sets (or adds) `key` in a map value.
pub fn with_map(mut v: Value, key: &str, val: Value) -> Value {
    if let Value::Map(m) = &mut v {
        if let Some(e) = m.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
            e.1 = val;
        } else {
            m.push((Value::from(key), val));
        }
    }
    v
}

/// Removes `key` from a map value.
pub fn without_map(mut v: Value, key: &str) -> Value {
    if let Value::Map(m) = &mut v {
        m.retain(|(k, _)| k.as_str() != Some(key));
    }
    v
}

/// Sets a header key.
pub fn with_root(v: Value, key: &str, val: Value) -> Value {
    with_map(v, key, val)
}

/// Removes a header key.
pub fn without_root(v: Value, key: &str) -> Value {
    without_map(v, key)
}

fn edit_leaf(mut v: Value, i: usize, f: impl FnOnce(Value) -> Value) -> Value {
    if let Value::Map(m) = &mut v {
        let leaves = m.iter_mut().find(|(k, _)| k.as_str() == Some("leaves"));
        if let Some((_, Value::Array(items))) = leaves {
            let old = std::mem::replace(&mut items[i], Value::Nil);
            items[i] = f(old);
        }
    }
    v
}

/// Sets a key of leaf record `i`.
pub fn with_leaf(v: Value, i: usize, key: &str, val: Value) -> Value {
    edit_leaf(v, i, |l| with_map(l, key, val))
}

/// Removes a key of leaf record `i`.
pub fn without_leaf(v: Value, i: usize, key: &str) -> Value {
    edit_leaf(v, i, |l| without_map(l, key))
}

/// A whole file: prefix, header, zero padding to the alignment, then `data`.
pub fn raw_file(header_bytes: &[u8], alignment: u64, data: &[u8]) -> Vec<u8> {
    let mut out = b"EQXMSG".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(header_bytes);
    while out.len() as u64 % alignment != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    out
}

/// Leaf buffers matching [`good_header`].
pub fn good_leaves() -> Vec<Option<Vec<u8>>> {
    let a: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..12u8).map(|i| i.wrapping_mul(17)).collect();
    vec![Some(a), Some(b), None]
}

/// Borrowed view of leaf buffers.
pub fn as_refs(leaves: &[Option<Vec<u8>>]) -> Vec<Option<&[u8]>> {
    leaves.iter().map(|l| l.as_deref()).collect()
}
