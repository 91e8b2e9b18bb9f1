//! The dtype table (FORMAT.md section 5): element type names and their stored bit widths.

use crate::error::{Error, Result};

/// Every dtype name the format knows, in the order of FORMAT.md section 5.
const NAMES: &[&str] = &[
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "float16",
    "bfloat16",
    "int32",
    "uint32",
    "float32",
    "int64",
    "uint64",
    "float64",
    "complex64",
    "complex128",
    "float8_e3m4",
    "float8_e4m3",
    "float8_e4m3b11fnuz",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e5m3fnu",
    "float8_e8m0fnu",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "int4",
    "uint4",
    "float4_e2m1fn",
    "int2",
    "uint2",
];

/// All dtype names of the format.
pub fn names() -> &'static [&'static str] {
    NAMES
}

/// Bits per stored element of `name`, or `None` for an unknown name.
pub fn lookup(name: &str) -> Option<u32> {
    Some(match name {
        "bool" | "int8" | "uint8" => 8,
        "int16" | "uint16" | "float16" | "bfloat16" => 16,
        "int32" | "uint32" | "float32" => 32,
        "int64" | "uint64" | "float64" | "complex64" => 64,
        "complex128" => 128,
        "float8_e3m4" | "float8_e4m3" | "float8_e4m3b11fnuz" | "float8_e4m3fn"
        | "float8_e4m3fnuz" | "float8_e5m2" | "float8_e5m2fnuz" | "float8_e5m3fnu"
        | "float8_e8m0fnu" => 8,
        "float6_e2m3fn" | "float6_e3m2fn" => 8,
        "int4" | "uint4" | "float4_e2m1fn" => 4,
        "int2" | "uint2" => 2,
        _ => return None,
    })
}

/// Bits per stored element of `name`; `UnknownDType` if the name is not in the table.
pub fn bits(name: &str) -> Result<u32> {
    lookup(name).ok_or_else(|| Error::UnknownDType {
        field: "dtype".into(),
        dtype: name.to_owned(),
    })
}

/// Whether `name` is stored packed (fewer than 8 bits per element).
pub fn is_packed(name: &str) -> bool {
    matches!(lookup(name), Some(b) if b < 8)
}

/// The number of elements of `shape`, or `None` if it overflows u64.
///
/// A shape with a zero dimension has zero elements, however large the other dimensions.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// `ceil(prod(shape) * bits / 8)`, or `None` if the element count or byte length overflows u64
/// (with [`element_count`]'s zero rule).
pub fn nbytes_for_bits(bits: u32, shape: &[u64]) -> Option<u64> {
    let count = element_count(shape)?;
    let bits_total = u128::from(count) * u128::from(bits);
    u64::try_from(bits_total.div_ceil(8)).ok()
}

/// Bytes needed to store an array of `name` with `shape` (FORMAT.md section 5).
pub fn storage_nbytes(name: &str, shape: &[u64]) -> Result<u64> {
    let b = bits(name)?;
    if shape.len() > crate::frame::MAX_NDIM {
        return Err(Error::TooManyDims {
            field: "shape".into(),
            ndim: shape.len(),
        });
    }
    nbytes_for_bits(b, shape).ok_or_else(|| Error::SizeOverflow {
        what: format!("the byte length of a {name} array of shape {shape:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(names().len(), 31);
        assert_eq!(bits("float8_e5m3fnu").unwrap(), 8);
        for n in names() {
            assert!(lookup(n).is_some(), "{n}");
        }
        assert_eq!(bits("complex128").unwrap(), 128);
        assert_eq!(bits("float6_e2m3fn").unwrap(), 8);
        assert_eq!(bits("nope").unwrap_err().kind(), "DTypeError");
        assert!(is_packed("int4") && is_packed("uint2") && !is_packed("int8"));
    }

    #[test]
    fn storage() {
        assert_eq!(storage_nbytes("float32", &[]).unwrap(), 4);
        assert_eq!(storage_nbytes("float32", &[3, 5]).unwrap(), 60);
        assert_eq!(storage_nbytes("int4", &[3]).unwrap(), 2);
        assert_eq!(storage_nbytes("int4", &[4]).unwrap(), 2);
        assert_eq!(storage_nbytes("int2", &[5]).unwrap(), 2);
        assert_eq!(storage_nbytes("uint2", &[0, 7]).unwrap(), 0);
        assert_eq!(storage_nbytes("bool", &[7]).unwrap(), 7);
        // A zero dimension wins over an overflowing product.
        assert_eq!(storage_nbytes("int8", &[u64::MAX, u64::MAX, 0]).unwrap(), 0);
        // Element count fits, byte count does not.
        let e = storage_nbytes("float64", &[u64::MAX / 4]).unwrap_err();
        assert_eq!(e.kind(), "LayoutError");
        // Element count overflows.
        assert!(storage_nbytes("int8", &[1 << 32, 1 << 32]).is_err());
        // Packed types: count * bits overflows u64 but the bytes fit.
        assert_eq!(
            storage_nbytes("int4", &[u64::MAX]).unwrap(),
            u64::MAX / 2 + 1
        );
        assert_eq!(
            storage_nbytes("int8", &[1; 65]).unwrap_err().kind(),
            "LimitError"
        );
    }
}
