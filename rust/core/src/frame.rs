//! The fixed 16-byte prefix, the format's limits, and where the data section starts.

use crate::error::{Error, Result};

/// The six bytes every eqx_msg file starts with.
pub const MAGIC: &[u8; 6] = b"EQXMSG";
/// The format version this crate reads and writes.
pub const VERSION: u16 = 1;
/// Length of the prefix: magic, u16 version, u64 header length.
pub const PREFIX_LEN: usize = 16;
/// Smallest allowed `alignment`.
pub const MIN_ALIGNMENT: u64 = 64;
/// Largest allowed `alignment`.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Longest header a reader accepts (256 MiB).
pub const MAX_HEADER_LEN: u64 = 256 << 20;
/// Most nested msgpack arrays/maps in a header (the header map itself is level 1).
pub const MAX_DEPTH: usize = 128;
/// Most dimensions of a leaf's shape.
pub const MAX_NDIM: usize = 64;

/// The smallest multiple of `a` that is `>= x`; `a` must be non-zero.
pub fn align_up(x: u64, a: u64) -> Result<u64> {
    if a == 0 {
        return Err(Error::BadAlignment { alignment: 0 });
    }
    x.div_ceil(a)
        .checked_mul(a)
        .ok_or_else(|| Error::SizeOverflow {
            what: format!("align_up({x}, {a})"),
        })
}

/// Checks the prefix at the start of `buf`; returns `(version, header_len)`.
///
/// Fails with `BadMagic`, `TruncatedPrefix`, `UnsupportedVersion` or `HeaderTooLong`. It does not
/// look past byte 16, so it works on the first 16 bytes of a stream.
pub fn parse_prefix(buf: &[u8]) -> Result<(u16, u64)> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(Error::BadMagic {
            found: buf[..n].to_vec(),
        });
    }
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Err(Error::TruncatedPrefix {
            len: buf.len() as u64,
        });
    };
    let version = u16::from_le_bytes([prefix[6], prefix[7]]);
    if version != VERSION {
        return Err(Error::UnsupportedVersion { version });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&prefix[8..16]);
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLong { header_len });
    }
    Ok((version, header_len))
}

/// The 16-byte prefix for a header of `header_len` bytes.
pub fn encode_prefix(header_len: u64) -> [u8; PREFIX_LEN] {
    let mut out = [0u8; PREFIX_LEN];
    out[..6].copy_from_slice(MAGIC);
    out[6..8].copy_from_slice(&VERSION.to_le_bytes());
    out[8..].copy_from_slice(&header_len.to_le_bytes());
    out
}

/// `D = align_up(16 + header_len, alignment)`: the file offset of the data section.
pub fn data_start(header_len: u64, alignment: u64) -> Result<u64> {
    let end = header_len
        .checked_add(PREFIX_LEN as u64)
        .ok_or_else(|| Error::SizeOverflow {
            what: "the header end".into(),
        })?;
    align_up(end, alignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_rounds() {
        assert_eq!(align_up(0, 64).unwrap(), 0);
        assert_eq!(align_up(1, 64).unwrap(), 64);
        assert_eq!(align_up(64, 64).unwrap(), 64);
        assert_eq!(align_up(65, 64).unwrap(), 128);
        assert!(align_up(u64::MAX, 64).is_err());
        assert!(align_up(1, 0).is_err());
    }

    #[test]
    fn prefix_round_trip() {
        let p = encode_prefix(1234);
        assert_eq!(parse_prefix(&p).unwrap(), (1, 1234));
        assert_eq!(&p[..6], b"EQXMSG");
        assert_eq!(data_start(1234, 64).unwrap(), 1280);
    }

    #[test]
    fn prefix_errors() {
        assert_eq!(parse_prefix(b"NOPE").unwrap_err().kind(), "MagicError");
        assert_eq!(parse_prefix(b"").unwrap_err().kind(), "LengthError");
        assert_eq!(
            parse_prefix(b"EQXMSG\x01").unwrap_err().kind(),
            "LengthError"
        );
        let mut p = encode_prefix(10);
        p[6] = 2;
        assert_eq!(parse_prefix(&p).unwrap_err().kind(), "VersionError");
        let mut p = encode_prefix(u64::MAX);
        assert_eq!(parse_prefix(&p).unwrap_err().kind(), "LimitError");
        p[0] = b'X';
        assert_eq!(parse_prefix(&p).unwrap_err().kind(), "MagicError");
    }
}
