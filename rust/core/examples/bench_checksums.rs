//! Why the format sums with CRC32C: its speed against XXH3-64 and memcpy on this machine.
//!
//! `cargo run --release -p eqx_msg_core --example bench_checksums [MiB]` prints GB/s (median of 7)
//! of one memcpy, CRC32C on one core and on all cores (pieces combined, as `Reader::verify`
//! does), and XXH3-64 on one core (it cannot be split: one leaf is one thread).

use std::time::Instant;

fn median_gbs(bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    bytes as f64 / times[3] / 1e9
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let n = mib << 20;
    let src: Vec<u8> = (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut dst = vec![0u8; n];
    let mut sink = 0u64;
    let rows = [
        (
            "memcpy (1 core)",
            median_gbs(n, || dst.copy_from_slice(&src)),
        ),
        (
            "CRC32C (1 core)",
            median_gbs(n, || {
                sink ^= u64::from(eqx_msg_core::checksum::crc32c(&src))
            }),
        ),
        (
            "CRC32C (all cores)",
            median_gbs(n, || {
                sink ^= u64::from(eqx_msg_core::checksum::crc32c_all(&[&src])[0])
            }),
        ),
        (
            "XXH3-64 (1 core)",
            median_gbs(n, || sink ^= xxhash_rust::xxh3::xxh3_64(&src)),
        ),
    ];
    println!(
        "{mib} MiB, {} cores",
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    for (name, gbs) in rows {
        println!("{name:>20}: {gbs:6.1} GB/s");
    }
    std::hint::black_box(sink);
}
