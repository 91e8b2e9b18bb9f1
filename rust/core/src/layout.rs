//! Where a writer puts each leaf in the data section.

use crate::error::{Error, Result};
use crate::frame::{align_up, MAX_ALIGNMENT, MIN_ALIGNMENT};

/// Lays out leaves of the given byte lengths in order, each at the next multiple of `alignment`.
///
/// Returns `(offsets, data_nbytes)`: a zero-size leaf still gets the aligned cursor as its offset,
/// and `data_nbytes` is the end of the last leaf (0 when there are none).
pub fn plan(nbytes: &[u64], alignment: u64) -> Result<(Vec<u64>, u64)> {
    if !alignment.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&alignment) {
        return Err(Error::BadAlignment { alignment });
    }
    let mut offsets = Vec::with_capacity(nbytes.len());
    let mut end = 0u64;
    for (i, &n) in nbytes.iter().enumerate() {
        let offset = align_up(end, alignment)?;
        offsets.push(offset);
        end = offset.checked_add(n).ok_or_else(|| Error::SizeOverflow {
            what: format!("the end of leaf {i} in the layout"),
        })?;
    }
    Ok((offsets, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_out_in_order() {
        assert_eq!(plan(&[], 64).unwrap(), (vec![], 0));
        assert_eq!(plan(&[12, 12], 64).unwrap(), (vec![0, 64], 76));
        assert_eq!(plan(&[0, 0, 5], 64).unwrap(), (vec![0, 0, 0], 5));
        assert_eq!(plan(&[64, 0, 1], 64).unwrap(), (vec![0, 64, 64], 65));
        assert_eq!(plan(&[1, 0], 128).unwrap(), (vec![0, 128], 128));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(plan(&[1], 48).unwrap_err().kind(), "LayoutError");
        assert_eq!(plan(&[1], 32).unwrap_err().kind(), "LayoutError");
        assert_eq!(plan(&[1], 1 << 21).unwrap_err().kind(), "LayoutError");
        assert!(plan(&[u64::MAX, 1], 64).is_err());
        assert!(plan(&[u64::MAX - 10], 64).is_ok());
    }
}
