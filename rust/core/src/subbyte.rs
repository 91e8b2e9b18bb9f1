//! Packing of 4-bit and 2-bit elements.
//!
//! In memory (numpy / ml_dtypes) each such element is one byte whose low `bits` bits hold the
//! value (int4 `-1` is `0x0F`). On disk `8 / bits` elements share a byte: element `j` lives in byte
//! `j / (8 / bits)` at bit `(j % (8 / bits)) * bits`, and unused high bits of the last byte are 0.

use crate::error::{Error, Result};

fn per_byte(bits: u32) -> Result<usize> {
    match bits {
        2 => Ok(4),
        4 => Ok(2),
        _ => Err(Error::BadBits { bits }),
    }
}

/// Packed length of `count` elements of `bits` bits (2 or 4).
pub fn packed_len(bits: u32, count: usize) -> Result<usize> {
    Ok(count.div_ceil(per_byte(bits)?))
}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::BufferLength {
            what,
            expected: expected as u64,
            actual: actual as u64,
        })
    }
}

/// Packs one-byte-per-element `src` into `dst` (`dst.len()` must be `packed_len(bits, src.len())`).
///
/// Each source byte is masked to its low `bits` bits; unused bits of the last byte are zeroed.
pub fn pack(bits: u32, src: &[u8], dst: &mut [u8]) -> Result<()> {
    let per = per_byte(bits)?;
    check_len("the packed output", src.len().div_ceil(per), dst.len())?;
    let mask = (1u8 << bits) - 1;
    let full = src.len() / per;
    // Whole bytes: fixed-size groups so the compiler can vectorise.
    if bits == 4 {
        for (out, g) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *out = (g[0] & 0x0F) | (g[1] << 4);
        }
    } else {
        for (out, g) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *out = (g[0] & 3) | ((g[1] & 3) << 2) | ((g[2] & 3) << 4) | (g[3] << 6);
        }
    }
    // The partial last byte, if any.
    if let Some(out) = dst.get_mut(full) {
        *out = src[full * per..]
            .iter()
            .enumerate()
            .fold(0u8, |acc, (k, &v)| acc | ((v & mask) << (k as u32 * bits)));
    }
    Ok(())
}

/// Unpacks `count` elements from packed `src` into one byte each in `dst` (`dst.len() == count`).
///
/// `src.len()` must be `packed_len(bits, count)`; the values are not sign-extended.
pub fn unpack(bits: u32, src: &[u8], count: usize, dst: &mut [u8]) -> Result<()> {
    let per = per_byte(bits)?;
    check_len("the packed input", count.div_ceil(per), src.len())?;
    check_len("the unpacked output", count, dst.len())?;
    let mask = (1u8 << bits) - 1;
    for (group, &byte) in dst.chunks_mut(per).zip(src) {
        for (k, out) in group.iter_mut().enumerate() {
            *out = (byte >> (k as u32 * bits)) & mask;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bits: u32, src: &[u8]) -> Vec<u8> {
        let mut packed = vec![0xAA; packed_len(bits, src.len()).unwrap()];
        pack(bits, src, &mut packed).unwrap();
        let mut back = vec![0xAA; src.len()];
        unpack(bits, &packed, src.len(), &mut back).unwrap();
        let mask = (1u8 << bits) - 1;
        let masked: Vec<u8> = src.iter().map(|v| v & mask).collect();
        assert_eq!(back, masked);
        packed
    }

    #[test]
    fn int4_layout() {
        // int4 [-1, 2, 7] in memory is [0x0F, 0x02, 0x07].
        assert_eq!(round_trip(4, &[0x0F, 0x02, 0x07]), vec![0x2F, 0x07]);
        assert_eq!(round_trip(4, &[0x01, 0x02]), vec![0x21]);
        // High garbage bits are masked off.
        assert_eq!(round_trip(4, &[0xF1]), vec![0x01]);
        assert_eq!(round_trip(4, &[]), Vec::<u8>::new());
    }

    #[test]
    fn int2_layout() {
        // int2 [-2, 1, -1, 0, 1] in memory is [0x02, 0x01, 0x03, 0x00, 0x01].
        assert_eq!(
            round_trip(2, &[0x02, 0x01, 0x03, 0x00, 0x01]),
            vec![0b00_11_01_10, 0b01]
        );
        assert_eq!(round_trip(2, &[3, 3, 3]), vec![0b11_11_11]);
    }

    #[test]
    fn all_lengths() {
        for bits in [2, 4] {
            for n in 0..40usize {
                let src: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
                let packed = round_trip(bits, &src);
                let used = n * bits as usize % 8;
                if used != 0 {
                    assert_eq!(packed.last().unwrap() >> used, 0);
                }
            }
        }
    }

    #[test]
    fn bad_arguments() {
        let mut out = [0u8; 1];
        assert_eq!(pack(3, &[1], &mut out).unwrap_err().kind(), "DTypeError");
        assert_eq!(
            pack(4, &[1, 2, 3], &mut out).unwrap_err().kind(),
            "LayoutError"
        );
        assert!(unpack(4, &[1], 3, &mut [0u8; 3]).is_err());
        assert!(unpack(4, &[1], 2, &mut [0u8; 1]).is_err());
    }
}
