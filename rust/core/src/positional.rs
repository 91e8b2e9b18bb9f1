//! Writing leaves at their offsets in a file (positional writes, `pwrite`), summing as it goes.
//!
//! Leaves may be written in any order and from several threads or processes at once: each call
//! writes only its own byte range, so one file can be filled by many writers. Bytes never written
//! (padding) read as zero once the file has its final length (`File::set_len`).

use std::fs::File;
use std::io;

use crate::checksum;
use crate::error::Result;
use crate::writer::write_range;

/// A large write is split into pieces of this many bytes, summed and written by several threads.
const PIECE: usize = 8 << 20;

/// Writes `bytes` at file offset `offset`; returns their CRC32C.
///
/// Large buffers are split into pieces taken by all cores: each sums a piece, then writes it, so
/// summing one piece overlaps writing another (the kernel may serialise the writes themselves).
pub fn write_at(file: &File, offset: u64, bytes: &[u8]) -> io::Result<u32> {
    let pieces: Vec<&[u8]> = bytes.chunks(PIECE).collect();
    let sums = checksum::each_piece(&pieces, PIECE, |k, piece| {
        let crc = checksum::crc32c(piece);
        // Pieces are PIECE bytes apart in `bytes`: k * PIECE < bytes.len() fits.
        write_all_at(file, piece, offset + (k * PIECE) as u64)?;
        Ok::<_, io::Error>(crc)
    })?;
    let mut crc = 0; // the CRC32C of no bytes
    for (piece, &sum) in pieces.iter().zip(&sums) {
        crc = checksum::combine(crc, sum, piece.len() as u64);
    }
    Ok(crc)
}

/// Gathers small leaves into one buffer (each `(offset, bytes)` at `offset - base`, zeros
/// between) and writes it at file offset `file_offset` in one call; returns each leaf's CRC32C.
///
/// Segments follow [`write_range`]'s rules (sorted, disjoint, inside `[base, base + length)`).
pub fn write_gathered(
    file: &File,
    file_offset: u64,
    segments: &[(u64, &[u8])],
    base: u64,
    length: usize,
) -> Result<io::Result<Vec<u32>>> {
    let mut block = vec![0u8; length];
    let crcs = write_range(segments, base, &mut block)?;
    Ok(write_all_at(file, &block, file_offset).map(|()| crcs))
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        match file.seek_write(bytes, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pieces_land_at_their_offsets_in_any_order() {
        let dir = std::env::temp_dir().join(format!("eqx_msg_positional_{}", std::process::id()));
        let big: Vec<u8> = (0..(3 * PIECE + 999)).map(|i| (i * 13 + 1) as u8).collect();
        let small = [5u8; 10];
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap();
        let total = 64 + big.len() as u64 + 128;
        file.set_len(total).unwrap();
        let crcs = write_gathered(&file, 64 + big.len() as u64 + 64, &[(70, &small)], 64, 64)
            .unwrap()
            .unwrap();
        assert_eq!(crcs, vec![checksum::crc32c(&small)]);
        assert_eq!(write_at(&file, 64, &big).unwrap(), checksum::crc32c(&big));
        let mut got = Vec::new();
        File::open(&dir).unwrap().read_to_end(&mut got).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let mut want = vec![0u8; total as usize];
        want[64..64 + big.len()].copy_from_slice(&big);
        let at = 64 + big.len() + 64 + 6;
        want[at..at + 10].copy_from_slice(&small);
        assert!(got == want);
    }
}
