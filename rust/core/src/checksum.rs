//! Checksums (FORMAT.md section 9): a CRC32C of every leaf's stored bytes and one of the prefix and
//! header, so that any single flipped bit anywhere in a file is found.
//!
//! CRC32C (Castagnoli) rather than a faster 64-bit hash such as XXH3: a CRC detects every error of
//! up to 32 consecutive bits by construction (a hash only with high probability), runs at memory
//! speed with the SSE4.2/ARMv8 instruction, and two CRCs combine into the CRC of the concatenation,
//! so one leaf can be summed by several threads (or processes, each writing its own shards) and
//! merged; `examples/bench_checksums.rs` measures both.
//!
//! A writer adds two entries at the end of the header map ([`with_slots`]): `leaf_crc32c`, a `bin`
//! of 4 bytes per leaf record, and `header_crc32c`, a msgpack uint32 (`0xce` + 4 bytes) whose value
//! is the header's last 4 bytes. It fills them once the data is written ([`seal`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use crate::error::{Error, Result};
use crate::frame::PREFIX_LEN;

/// Header key of the leaf checksums: a `bin` of one little-endian `u32` per leaf record.
pub const LEAF_KEY: &str = "leaf_crc32c";
/// Header key of the header checksum: the header's last value, a msgpack uint32.
pub const HEADER_KEY: &str = "header_crc32c";

/// The 15 bytes before the 4 checksum bytes at the end of a sealed header: the key
/// `header_crc32c` as a msgpack fixstr, then the uint32 marker `0xce`.
const SEAL_MARK: [u8; 15] = *b"\xadheader_crc32c\xce";
/// Bytes a sealed header ends with: [`SEAL_MARK`] and the checksum itself (big-endian).
pub const SEAL_LEN: usize = SEAL_MARK.len() + 4;

/// Pieces a large buffer is split into for several threads (each at least this long).
const PIECE: usize = 4 << 20;

/// The CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The CRC32C of `a ++ bytes`, given `crc32c(a)`.
pub fn append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// The CRC32C of `a ++ b`, given `crc32c(a)`, `crc32c(b)` and `b.len()`.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    // The crate takes usize; a piece longer than usize::MAX cannot be in memory anyway.
    crc32c::crc32c_combine(crc_a, crc_b, len_b as usize)
}

/// The CRC32C of each of `buffers`, summed by all cores (large buffers split into pieces).
pub fn crc32c_all(buffers: &[&[u8]]) -> Vec<u32> {
    // Work items: (buffer, start, end), buffers in order, pieces of each in order.
    let mut items = Vec::new();
    for (b, buf) in buffers.iter().enumerate() {
        let mut start = 0;
        loop {
            let end = (start + PIECE).min(buf.len());
            items.push((b, start, end));
            if end == buf.len() {
                break;
            }
            start = end;
        }
    }
    let pieces: Vec<&[u8]> = items.iter().map(|&(b, s, e)| &buffers[b][s..e]).collect();
    let sums = match each_piece(&pieces, PIECE, |_, piece| {
        Ok::<_, std::convert::Infallible>(crc32c(piece))
    }) {
        Ok(sums) => sums,
        Err(never) => match never {},
    };
    let mut out = vec![0u32; buffers.len()];
    for (&(b, s, e), &sum) in items.iter().zip(&sums) {
        out[b] = if s == 0 {
            sum
        } else {
            combine(out[b], sum, (e - s) as u64)
        };
    }
    out
}

/// Runs `f(k, pieces[k])` for every piece, on as many threads as there are cores (at most one per
/// `per_thread` bytes), each taking the next piece in turn; returns the results in piece order,
/// or the first error (after which no further piece is started).
pub(crate) fn each_piece<E: Send>(
    pieces: &[&[u8]],
    per_thread: usize,
    f: impl Fn(usize, &[u8]) -> Result<u32, E> + Sync,
) -> Result<Vec<u32>, E> {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let threads = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(total / per_thread.max(1))
        .max(1);
    if threads == 1 {
        return pieces.iter().enumerate().map(|(k, p)| f(k, p)).collect();
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![0u32; pieces.len()]);
    let failed: Mutex<Option<E>> = Mutex::new(None);
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(piece) = pieces.get(k) else { break };
                match f(k, piece) {
                    // A panicking worker leaves nothing half-done to poison: take the data anyway.
                    Ok(r) => results.lock().unwrap_or_else(|p| p.into_inner())[k] = r,
                    Err(e) => {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        next.store(pieces.len(), Ordering::Relaxed); // stop every worker
                        break;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(results.into_inner().unwrap_or_else(|p| p.into_inner())),
    }
}

/// The checksum `header_crc32c` holds: the CRC32C of every file byte before it (the prefix and
/// all of the header but its last 4 bytes). `head` is the file's first `16 + header_len` bytes.
pub fn header_crc(head: &[u8]) -> u32 {
    crc32c(&head[..head.len().saturating_sub(4)])
}

/// Whether a header ends as a sealed one does: [`SEAL_MARK`], then 4 checksum bytes.
pub fn looks_sealed(header: &[u8]) -> bool {
    header.len() >= SEAL_LEN && header[header.len() - SEAL_LEN..header.len() - 4] == SEAL_MARK
}

/// `header` (an encoded header map without checksum entries, with `n_leaves` leaf records) with
/// the two checksum entries appended to its map, their values zero until [`seal`] fills them.
pub fn with_slots(header: &[u8], n_leaves: usize) -> Result<Vec<u8>> {
    let bad = |reason: &str| Error::BadChecksumField {
        reason: reason.to_owned(),
    };
    let (entries, body) = match header.first() {
        Some(&b @ 0x80..=0x8f) => (usize::from(b & 0x0f), 1),
        Some(0xde) if header.len() >= 3 => {
            (usize::from(u16::from_be_bytes([header[1], header[2]])), 3)
        }
        Some(0xdf) if header.len() >= 5 => {
            let n = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            (n as usize, 5)
        }
        _ => return Err(bad("the header to seal is not a msgpack map")),
    };
    let entries = entries + 2;
    let blob = n_leaves
        .checked_mul(4)
        .filter(|&n| u32::try_from(n).is_ok())
        .ok_or_else(|| bad("too many leaves for leaf_crc32c"))?;
    let mut out = Vec::with_capacity(header.len() + blob + 64);
    match entries {
        0..=15 => out.push(0x80 | entries as u8),
        16..=0xffff => {
            out.push(0xde);
            out.extend_from_slice(&(entries as u16).to_be_bytes());
        }
        _ => {
            let n = u32::try_from(entries).map_err(|_| bad("too many header entries"))?;
            out.push(0xdf);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out.extend_from_slice(&header[body..]);
    out.push(0xa0 | LEAF_KEY.len() as u8);
    out.extend_from_slice(LEAF_KEY.as_bytes());
    match blob {
        0..=0xff => out.extend_from_slice(&[0xc4, blob as u8]),
        0x100..=0xffff => {
            out.push(0xc5);
            out.extend_from_slice(&(blob as u16).to_be_bytes());
        }
        _ => {
            out.push(0xc6);
            out.extend_from_slice(&(blob as u32).to_be_bytes());
        }
    }
    out.resize(out.len() + blob, 0);
    out.extend_from_slice(&SEAL_MARK);
    out.extend_from_slice(&[0; 4]);
    Ok(out)
}

/// Fills the checksum entries of `head` (prefix + a header made by [`with_slots`], the first
/// `16 + header_len` bytes of the file): the leaf checksums, then the header checksum over them.
pub fn seal(head: &mut [u8], leaf_crcs: &[u32]) -> Result<()> {
    let blob = leaf_crcs.len() * 4;
    if head.len() < PREFIX_LEN + SEAL_LEN + blob || !looks_sealed(&head[PREFIX_LEN..]) {
        return Err(Error::BadChecksumField {
            reason: "the header has no checksum slots for these leaves".into(),
        });
    }
    let end = head.len() - SEAL_LEN;
    for (k, crc) in leaf_crcs.iter().enumerate() {
        head[end - blob + 4 * k..end - blob + 4 * k + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = header_crc(head);
    let n = head.len();
    head[n - 4..].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C (RFC 3720 appendix B.4 / the CRC catalogue).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn pieces_combine_to_the_whole() {
        let big: Vec<u8> = (0..(3 * PIECE + 12345))
            .map(|i| (i * 31 + 7) as u8)
            .collect();
        let small = b"abc".as_slice();
        let sums = crc32c_all(&[&big, small, &[], &big[..PIECE]]);
        assert_eq!(
            sums,
            vec![crc32c(&big), crc32c(small), 0, crc32c(&big[..PIECE])]
        );
    }

    #[test]
    fn slots_extend_the_map_and_seal_fills_them() {
        for entries in [1usize, 14, 15, 16, 70_000] {
            let mut map = rmpv::Value::Map(
                (0..entries)
                    .map(|i| (format!("k{i}").into(), rmpv::Value::from(i)))
                    .collect(),
            );
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &map).unwrap();
            let slotted = with_slots(&bytes, 3).unwrap();
            let mut head = crate::frame::encode_prefix(slotted.len() as u64).to_vec();
            head.extend_from_slice(&slotted);
            seal(&mut head, &[1, 2, 0xdead_beef]).unwrap();
            let decoded = rmpv::decode::read_value(&mut &head[PREFIX_LEN..]).unwrap();
            let rmpv::Value::Map(ref mut pairs) = map else {
                unreachable!()
            };
            let mut blob = Vec::new();
            for c in [1u32, 2, 0xdead_beef] {
                blob.extend_from_slice(&c.to_le_bytes());
            }
            pairs.push((LEAF_KEY.into(), rmpv::Value::Binary(blob)));
            pairs.push((HEADER_KEY.into(), rmpv::Value::from(header_crc(&head))));
            assert_eq!(decoded, map, "{entries} entries");
            assert!(looks_sealed(&head[PREFIX_LEN..]));
        }
        assert!(with_slots(&[0x91, 0x01], 0).is_err());
        assert!(seal(&mut [0u8; 20], &[]).is_err());
    }
}
