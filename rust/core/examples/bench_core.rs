//! Timings of the hot paths: header decode+validate, and the parallel assemble copy.
//!
//! `cargo run --release -p eqx_msg_core --example bench_core` (`-- --quick`: small sizes, to test it)

use std::hint::black_box;
use std::time::{Duration, Instant};

use eqx_msg_core::rmpv::Value;
use eqx_msg_core::{layout, Frame, Header};

fn s(x: &str) -> Value {
    Value::from(x)
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// A realistic header with `n` float32 leaves of 64x64, optionally with a tree of `n`
/// Module-like nodes (else a list of the leaves); the tree's structure is checked, its values not
/// interpreted (about half the bytes).
fn header_bytes(n: usize, with_tree: bool) -> Vec<u8> {
    let nbytes = vec![64 * 64 * 4u64; n];
    let (offsets, data_nbytes) = layout::plan(&nbytes, 64).expect("valid layout");
    let leaves = (0..n)
        .map(|i| {
            map(vec![
                ("path", Value::from(format!(".layers[{}].linear.weight", i))),
                ("kind", s("jax")),
                ("dtype", s("float32")),
                (
                    "shape",
                    Value::Array(vec![Value::from(64), Value::from(64)]),
                ),
                ("offset", Value::from(offsets[i])),
                ("nbytes", Value::from(nbytes[i])),
                ("weak_type", Value::from(false)),
            ])
        })
        .collect();
    let nodes = (0..n)
        .map(|i| {
            map(vec![
                ("t", s("node")),
                ("cls", s("equinox.nn._linear.Linear")),
                ("aux", Value::Array(vec![Value::Nil, Value::from(64)])),
                // An array leaf is its bare index (FORMAT.md section 4).
                ("c", Value::Array(vec![Value::from(i)])),
            ])
        })
        .collect();
    let tree = if with_tree {
        map(vec![("t", s("list")), ("c", Value::Array(nodes))])
    } else {
        leaf_list(n)
    };
    encode_header(
        data_nbytes,
        leaves,
        vec![
            ("tree", tree),
            ("metadata", Value::Nil),
            ("writer", map(vec![("eqx_msg", s("0.1.0"))])),
        ],
    )
}

/// A list node of leaves `0..n` (every leaf record is referenced once: FORMAT.md section 4).
fn leaf_list(n: usize) -> Value {
    map(vec![
        ("t", s("list")),
        ("c", Value::Array((0..n).map(Value::from).collect())),
    ])
}

/// A header map with the required keys, `leaves`, and `extra` keys, msgpack-encoded.
fn encode_header(data_nbytes: u64, leaves: Vec<Value>, extra: Vec<(&str, Value)>) -> Vec<u8> {
    let mut entries = vec![
        ("format", s("eqx_msg")),
        ("version", Value::from(1)),
        ("alignment", Value::from(64)),
        ("data_nbytes", Value::from(data_nbytes)),
        ("leaves", Value::Array(leaves)),
    ];
    entries.extend(extra);
    let mut out = Vec::new();
    eqx_msg_core::rmpv::encode::write_value(&mut out, &map(entries)).expect("encode to Vec");
    out
}

fn median(mut f: impl FnMut() -> Duration, runs: usize) -> Duration {
    let mut t: Vec<Duration> = (0..runs).map(|_| f()).collect();
    t.sort();
    t[runs / 2]
}

fn time(f: impl FnOnce()) -> Duration {
    let t0 = Instant::now();
    f();
    t0.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 64 } else { 1 };
    println!("## header decode + validate (median of 9)\n");
    println!("| leaves | tree nodes | header bytes | median ms |");
    println!("|---:|---:|---:|---:|");
    for (n, with_tree) in [(10_000, true), (100_000, false), (100_000, true)] {
        let n = n / scale;
        let h = header_bytes(n, with_tree);
        let d = median(
            || {
                time(|| {
                    drop(black_box(
                        Header::decode_validated(black_box(&h)).expect("valid"),
                    ))
                })
            },
            9,
        );
        let nodes = if with_tree { n } else { 0 };
        println!("| {n} | {nodes} | {} | {:.2} |", h.len(), ms(d));
    }

    let size: usize = (1 << 30) / scale;
    const LEAVES: usize = 16;
    let sizes = vec![(size / LEAVES) as u64; LEAVES];
    let (offsets, data_nbytes) = layout::plan(&sizes, 64).expect("valid layout");
    let leaves = (0..LEAVES)
        .map(|i| {
            map(vec![
                ("path", Value::from(format!("[{i}]"))),
                ("kind", s("numpy")),
                ("dtype", s("uint8")),
                ("shape", Value::Array(vec![Value::from(sizes[i])])),
                ("offset", Value::from(offsets[i])),
                ("nbytes", Value::from(sizes[i])),
            ])
        })
        .collect();
    let hb = encode_header(data_nbytes, leaves, vec![("tree", leaf_list(LEAVES))]);
    let frame = Frame::new(&hb).expect("valid header");
    let total = frame.total_len() as usize;

    let src: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let bufs: Vec<&[u8]> = src.chunks(size / LEAVES).collect();
    let refs: Vec<Option<&[u8]>> = bufs.iter().map(|b| Some(*b)).collect();
    let mut dst = vec![1u8; total]; // pre-faulted: every page written once
                                    // The four cases are interleaved, so that noise from other tenants hits them alike.
    let runs = 7;
    let mut t: [Vec<Duration>; 4] = Default::default();
    for _ in 0..runs {
        t[0].push(time(|| dst[..size].copy_from_slice(black_box(&src))));
        t[1].push(time(|| {
            frame.write_into(&refs, &mut dst).expect("assemble")
        }));
        t[2].push(time(|| {
            let mut v: Vec<u8> = Vec::with_capacity(size);
            v.extend_from_slice(black_box(&src));
            black_box(v);
        }));
        t[3].push(time(|| {
            drop(black_box(
                eqx_msg_core::assemble(&hb, &refs).expect("assemble"),
            ))
        }));
    }
    let [memcpy, par, fresh_memcpy, fresh_par] = t.map(|mut v| {
        v.sort();
        v[runs / 2]
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e9;
    println!(
        "\n## copying {} MiB ({LEAVES} leaves, {threads} threads available, median of {runs})\n",
        size >> 20
    );
    println!("| case | median ms | GB/s | vs memcpy |");
    println!("|---|---:|---:|---:|");
    for (name, d, base) in [
        ("memcpy, pre-faulted dst", memcpy, memcpy),
        ("assemble_into, pre-faulted dst", par, memcpy),
        ("memcpy into a fresh Vec", fresh_memcpy, fresh_memcpy),
        ("assemble (fresh Vec)", fresh_par, fresh_memcpy),
    ] {
        println!(
            "| {name} | {:.1} | {:.2} | {:.2}x |",
            ms(d),
            gbps(d),
            base.as_secs_f64() / d.as_secs_f64()
        );
    }
}
