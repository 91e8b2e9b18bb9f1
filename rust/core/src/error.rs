//! The one error type: every way an eqx_msg file (or a request to write one) can be wrong.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A leaf record named in an error: its index in `leaves` and its `path` (empty when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRef {
    /// Index of the record in the header's `leaves` array.
    pub index: usize,
    /// The record's `path` field, or empty when it was not (yet) readable.
    pub path: String,
}

impl LeafRef {
    /// Names leaf `index` with key path `path`.
    pub fn new(index: usize, path: &str) -> Self {
        LeafRef {
            index,
            path: path.to_owned(),
        }
    }
}

impl fmt::Display for LeafRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "leaf {}", self.index)
        } else {
            write!(f, "leaf {} (path {:?})", self.index, self.path)
        }
    }
}

/// Everything that can be wrong with an eqx_msg file; [`Error::kind`] names the Python exception.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The file does not start with `EQXMSG`.
    BadMagic {
        /// The first (up to six) bytes found.
        found: Vec<u8>,
    },
    /// The prefix names a format version this reader does not know.
    UnsupportedVersion {
        /// The version in the prefix.
        version: u16,
    },
    /// The header's `version` disagrees with the prefix version.
    VersionMismatch {
        /// The version of the prefix (or the only supported version when checking a lone header).
        prefix: u16,
        /// The header's `version` field.
        header: u64,
    },
    /// Fewer than 16 bytes: the prefix itself is cut off.
    TruncatedPrefix {
        /// Length of the input.
        len: u64,
    },
    /// The file ends inside the header.
    TruncatedHeader {
        /// Header length stated by the prefix.
        header_len: u64,
        /// Length of the input.
        file_len: u64,
    },
    /// The file is shorter or longer than `data_start + data_nbytes`.
    FileLength {
        /// Length implied by the prefix and header.
        expected: u64,
        /// Length of the input.
        actual: u64,
    },
    /// The prefix states a header longer than [`crate::MAX_HEADER_LEN`].
    HeaderTooLong {
        /// Header length stated by the prefix.
        header_len: u64,
    },
    /// The header nests arrays/maps deeper than [`crate::MAX_DEPTH`].
    TooDeep {
        /// Where the decoder gave up or the depth limit was crossed.
        location: String,
    },
    /// A shape with more than [`crate::MAX_NDIM`] dimensions.
    TooManyDims {
        /// What the shape belongs to (a leaf, or an argument).
        field: String,
        /// Number of dimensions found.
        ndim: usize,
    },
    /// The header bytes are not valid msgpack.
    Msgpack {
        /// Byte offset within the header where decoding failed.
        offset: u64,
        /// What the decoder reported.
        reason: String,
    },
    /// The header's msgpack map ends before the header does.
    HeaderTrailing {
        /// Byte offset within the header where the map ended.
        offset: u64,
        /// Header length.
        header_len: u64,
    },
    /// A field holds the wrong msgpack type or an out-of-range value.
    WrongType {
        /// The field, e.g. `header field "alignment"` or `leaf 3 (path ".w") field "shape"`.
        field: String,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A required field is absent.
    MissingField {
        /// The field.
        field: String,
    },
    /// A map holds the same key twice.
    DuplicateKey {
        /// The map, e.g. `the header map` or `leaf 3`.
        map: String,
        /// The repeated key.
        key: String,
    },
    /// A msgpack ext value outside `metadata`, the only place ext values may occur.
    ExtOutsideMetadata {
        /// Where it is (the header field, the ext type and the header byte).
        location: String,
    },
    /// A tree node breaks a structural rule of FORMAT.md section 4.
    BadTree {
        /// The node, as the child indices from the root: `tree.c[0].c[3]`.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// A leaf's `sharding` record breaks a rule of FORMAT.md section 7.
    BadSharding {
        /// The leaf.
        leaf: LeafRef,
        /// What is wrong.
        reason: String,
    },
    /// A leaf shape whose item size times its nonzero dimensions exceeds `2**63 - 1` bytes: no
    /// numpy array or XLA shape can have it, even with no elements.
    ShapeTooLarge {
        /// The leaf.
        leaf: LeafRef,
        /// Its dtype name.
        dtype: String,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A map that must have string keys has another key type.
    NonStringKey {
        /// The map.
        map: String,
        /// The msgpack type of the key.
        found: String,
    },
    /// The header's `format` is not `"eqx_msg"`.
    BadFormat {
        /// The value found.
        found: String,
    },
    /// A leaf record's `kind` is not one of the known kinds.
    UnknownKind {
        /// The leaf.
        leaf: LeafRef,
        /// The kind found.
        kind: String,
    },
    /// `key_impl` is missing on a `key` leaf or present on a leaf that cannot have one.
    BadKeyImpl {
        /// The leaf.
        leaf: LeafRef,
        /// What is wrong.
        reason: &'static str,
    },
    /// A dtype name that is not in the dtype table.
    UnknownDType {
        /// Where the name was found.
        field: String,
        /// The name.
        dtype: String,
    },
    /// A sub-byte pack/unpack was asked for a width other than 2 or 4 bits.
    BadBits {
        /// The requested width.
        bits: u32,
    },
    /// `alignment` is not a power of two in `[MIN_ALIGNMENT, MAX_ALIGNMENT]`.
    BadAlignment {
        /// The alignment found.
        alignment: u64,
    },
    /// A leaf offset is not a multiple of the alignment.
    Misaligned {
        /// The leaf.
        leaf: LeafRef,
        /// Its offset.
        offset: u64,
        /// The header's alignment.
        alignment: u64,
    },
    /// A leaf's byte range ends past `data_nbytes` (or past 2^64).
    OutOfBounds {
        /// The leaf.
        leaf: LeafRef,
        /// Its offset.
        offset: u64,
        /// Its length.
        nbytes: u64,
        /// The data section length.
        data_nbytes: u64,
    },
    /// Two leaves' byte ranges overlap.
    Overlap {
        /// The leaf whose range starts first.
        first: LeafRef,
        /// Its range `[start, end)`.
        first_range: (u64, u64),
        /// The leaf whose range starts inside the first one.
        second: LeafRef,
        /// Its range `[start, end)`.
        second_range: (u64, u64),
    },
    /// A leaf's `nbytes` is not `storage_nbytes(dtype, shape)`.
    NbytesMismatch {
        /// The leaf.
        leaf: LeafRef,
        /// The stated length.
        nbytes: u64,
        /// `storage_nbytes(dtype, shape)`.
        expected: u64,
    },
    /// A size computation (element count, byte length, offset) does not fit in 64 bits.
    SizeOverflow {
        /// What was being computed.
        what: String,
    },
    /// An `abstract` leaf has an `offset` or `nbytes`.
    AbstractWithBytes {
        /// The leaf.
        leaf: LeafRef,
    },
    /// Writing: the number of leaf buffers differs from the header's `leaves`.
    LeafCount {
        /// Number of leaf records in the header.
        expected: usize,
        /// Number of buffers given.
        actual: usize,
    },
    /// Writing: a leaf with bytes got no buffer, or an abstract leaf got one.
    LeafData {
        /// The leaf.
        leaf: LeafRef,
        /// What is wrong.
        reason: &'static str,
    },
    /// Writing: a leaf buffer's length differs from its record's `nbytes`.
    LeafLength {
        /// The leaf.
        leaf: LeafRef,
        /// The record's `nbytes`.
        expected: u64,
        /// The buffer's length.
        actual: u64,
    },
    /// Writing a data-section range: a segment is out of order, overlaps another, or lies
    /// outside the range.
    BadSegment {
        /// The segment's index in the list given.
        index: usize,
        /// Its range `[start, end)` in the data section (`end` saturated on overflow).
        range: (u64, u64),
        /// The range being written.
        within: (u64, u64),
    },
    /// The header's checksum (`header_crc32c`) does not match the prefix and header bytes.
    HeaderChecksum {
        /// The checksum the header holds.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// Leaves whose stored bytes do not match their checksum (`leaf_crc32c`).
    LeafChecksums {
        /// Every damaged leaf, in record order.
        leaves: Vec<LeafRef>,
    },
    /// A byte that must be zero (header padding, padding between or after leaves) is not.
    NonzeroPadding {
        /// The file offset of the first nonzero byte.
        offset: u64,
        /// Which padding it lies in.
        what: &'static str,
    },
    /// Verification was asked of a file written without checksums.
    NoChecksums,
    /// The checksum fields of the header break their rules (FORMAT.md section 9).
    BadChecksumField {
        /// What is wrong.
        reason: String,
    },
    /// Memory for a new buffer could not be allocated.
    AllocFailed {
        /// The size asked for.
        bytes: u64,
    },
    /// A buffer given to a function has the wrong length.
    BufferLength {
        /// Which buffer.
        what: &'static str,
        /// The length required.
        expected: u64,
        /// The length given.
        actual: u64,
    },
}

/// The kinds of failure, one per Python exception class (`eqx_msg._errors`, or `MemoryError`).
///
/// The binding maps each kind to its class once, at import ([`ErrorKind::ALL`] lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not an eqx_msg file.
    Magic,
    /// A format version this reader does not know, or prefix and header disagree on it.
    Version,
    /// Truncated or trailing bytes.
    Length,
    /// A limit of the format (header length, depth, dimensions) is exceeded.
    Limit,
    /// The header is not valid msgpack, or a field is missing or malformed.
    Header,
    /// A dtype the format does not know.
    DType,
    /// A byte range is misaligned, out of bounds, overlapping or of the wrong length.
    Layout,
    /// The bytes are not those written: a checksum or a zero padding byte does not match.
    Checksum,
    /// Memory could not be allocated (Python's own `MemoryError`: not a fault of the data).
    Memory,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Magic,
        ErrorKind::Version,
        ErrorKind::Length,
        ErrorKind::Limit,
        ErrorKind::Header,
        ErrorKind::DType,
        ErrorKind::Layout,
        ErrorKind::Checksum,
        ErrorKind::Memory,
    ];

    /// The name of the Python exception class of this kind.
    pub fn class_name(self) -> &'static str {
        match self {
            ErrorKind::Magic => "MagicError",
            ErrorKind::Version => "VersionError",
            ErrorKind::Length => "LengthError",
            ErrorKind::Limit => "LimitError",
            ErrorKind::Header => "HeaderError",
            ErrorKind::DType => "DTypeError",
            ErrorKind::Layout => "LayoutError",
            ErrorKind::Checksum => "ChecksumError",
            ErrorKind::Memory => "MemoryError",
        }
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.class_name() == *other
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class_name())
    }
}

impl Error {
    /// The kind of this error (which Python exception class it is raised as).
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            BadMagic { .. } => ErrorKind::Magic,
            UnsupportedVersion { .. } | VersionMismatch { .. } => ErrorKind::Version,
            TruncatedPrefix { .. } | TruncatedHeader { .. } | FileLength { .. } => {
                ErrorKind::Length
            }
            HeaderTooLong { .. } | TooDeep { .. } | TooManyDims { .. } | ShapeTooLarge { .. } => {
                ErrorKind::Limit
            }
            Msgpack { .. }
            | HeaderTrailing { .. }
            | WrongType { .. }
            | MissingField { .. }
            | DuplicateKey { .. }
            | NonStringKey { .. }
            | ExtOutsideMetadata { .. }
            | BadSharding { .. }
            | BadTree { .. }
            | BadFormat { .. }
            | UnknownKind { .. }
            | BadKeyImpl { .. }
            | BadChecksumField { .. } => ErrorKind::Header,
            UnknownDType { .. } | BadBits { .. } => ErrorKind::DType,
            BadAlignment { .. }
            | Misaligned { .. }
            | OutOfBounds { .. }
            | Overlap { .. }
            | NbytesMismatch { .. }
            | SizeOverflow { .. }
            | AbstractWithBytes { .. }
            | LeafCount { .. }
            | LeafData { .. }
            | LeafLength { .. }
            | BadSegment { .. }
            | BufferLength { .. } => ErrorKind::Layout,
            HeaderChecksum { .. } | LeafChecksums { .. } | NonzeroPadding { .. } | NoChecksums => {
                ErrorKind::Checksum
            }
            AllocFailed { .. } => ErrorKind::Memory,
        }
    }

    /// Names the header field a nesting error lies in (other errors already say where they are).
    pub(crate) fn in_field(self, field: &str) -> Error {
        match self {
            Error::TooDeep { location } => Error::TooDeep {
                location: format!("in header field {field:?}: {location}"),
            },
            Error::ExtOutsideMetadata { location } => Error::ExtOutsideMetadata {
                location: format!("in header field {field:?}: {location}"),
            },
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::frame::{MAX_DEPTH, MAX_HEADER_LEN, MAX_NDIM, PREFIX_LEN};
        use Error::*;
        match self {
            BadMagic { found } => write!(
                f,
                "not an eqx_msg file: bytes 0..{} are {:?}, expected b\"EQXMSG\"",
                found.len(),
                String::from_utf8_lossy(found)
            ),
            UnsupportedVersion { version } => write!(
                f,
                "unsupported eqx_msg format version {version} at byte 6 (this reader knows version {})",
                crate::frame::VERSION
            ),
            VersionMismatch { prefix, header } => write!(
                f,
                "header field \"version\" is {header} but the prefix (byte 6) says version {prefix}"
            ),
            TruncatedPrefix { len } => write!(
                f,
                "truncated file: {len} bytes, shorter than the {PREFIX_LEN}-byte prefix"
            ),
            TruncatedHeader {
                header_len,
                file_len,
            } => write!(
                f,
                "truncated header: the prefix (bytes 8..16) says the header is {header_len} bytes \
                 (ending at byte {}), but the file is only {file_len} bytes",
                u128::from(*header_len) + PREFIX_LEN as u128
            ),
            FileLength { expected, actual } => {
                if actual < expected {
                    write!(
                        f,
                        "truncated file: {actual} bytes, but the prefix and header say {expected} \
                         (data section ends at byte {expected})"
                    )
                } else {
                    write!(
                        f,
                        "trailing bytes: the file is {actual} bytes, but the data section ends at \
                         byte {expected}"
                    )
                }
            }
            HeaderTooLong { header_len } => write!(
                f,
                "header length {header_len} (prefix bytes 8..16) exceeds the limit of \
                 {MAX_HEADER_LEN} bytes"
            ),
            TooDeep { location } => write!(
                f,
                "header nests arrays/maps deeper than {MAX_DEPTH} levels ({location})"
            ),
            TooManyDims { field, ndim } => write!(
                f,
                "{field}: shape has {ndim} dimensions, more than the limit of {MAX_NDIM}"
            ),
            Msgpack { offset, reason } => write!(
                f,
                "invalid msgpack in header at header byte {offset} (file byte {}): {reason}",
                u128::from(*offset) + PREFIX_LEN as u128
            ),
            HeaderTrailing { offset, header_len } => write!(
                f,
                "header map ends at header byte {offset} but the header is {header_len} bytes"
            ),
            WrongType {
                field,
                expected,
                found,
            } => write!(f, "{field}: expected {expected}, found {found}"),
            MissingField { field } => write!(f, "{field} is missing"),
            DuplicateKey { map, key } => write!(f, "{map} has the key {key:?} more than once"),
            ExtOutsideMetadata { location } => write!(
                f,
                "{location}: msgpack ext values may occur only in the header's metadata"
            ),
            BadSharding { leaf, reason } => write!(f, "{leaf} field \"sharding\": {reason}"),
            BadTree { node, reason } => write!(f, "header field \"tree\", node {node}: {reason}"),
            ShapeTooLarge { leaf, dtype, shape } => write!(
                f,
                "{leaf}: shape {shape:?} of dtype {dtype} is too large for a numpy array or an \
                 XLA shape: its item size times its nonzero dimensions exceed 2**63 - 1 bytes"
            ),
            NonStringKey { map, found } => {
                write!(f, "{map} has a non-string key ({found}); keys must be str")
            }
            BadFormat { found } => write!(
                f,
                "header field \"format\" is {found:?}, expected \"eqx_msg\""
            ),
            UnknownKind { leaf, kind } => write!(
                f,
                "{leaf} field \"kind\": unknown kind {kind:?} (expected numpy, numpy_scalar, jax, \
                 key or abstract)"
            ),
            BadKeyImpl { leaf, reason } => write!(f, "{leaf} field \"key_impl\": {reason}"),
            UnknownDType { field, dtype } => write!(f, "{field}: unknown dtype {dtype:?}"),
            BadBits { bits } => write!(
                f,
                "sub-byte packing supports 2 or 4 bits per element, got {bits}"
            ),
            BadAlignment { alignment } => write!(
                f,
                "header field \"alignment\" is {alignment}: must be a power of two between {} \
                 and {}",
                crate::frame::MIN_ALIGNMENT,
                crate::frame::MAX_ALIGNMENT
            ),
            Misaligned {
                leaf,
                offset,
                alignment,
            } => write!(
                f,
                "{leaf} field \"offset\": {offset} is not a multiple of the alignment {alignment}"
            ),
            OutOfBounds {
                leaf,
                offset,
                nbytes,
                data_nbytes,
            } => write!(
                f,
                "{leaf}: byte range [{offset}, {offset} + {nbytes}) is out of bounds: it ends \
                 past the data section (data_nbytes = {data_nbytes})"
            ),
            Overlap {
                first,
                first_range,
                second,
                second_range,
            } => write!(
                f,
                "{second}: byte range [{}, {}) overlaps {first} at [{}, {})",
                second_range.0, second_range.1, first_range.0, first_range.1
            ),
            NbytesMismatch {
                leaf,
                nbytes,
                expected,
            } => write!(
                f,
                "{leaf} field \"nbytes\": {nbytes}, but its dtype and shape need {expected} bytes"
            ),
            SizeOverflow { what } => write!(f, "{what} overflows: it does not fit in 64 bits"),
            AbstractWithBytes { leaf } => write!(
                f,
                "{leaf}: kind \"abstract\" must have neither \"offset\" nor \"nbytes\""
            ),
            LeafCount { expected, actual } => write!(
                f,
                "the header has {expected} leaf records but {actual} leaf buffers were given"
            ),
            LeafData { leaf, reason } => write!(f, "{leaf}: {reason}"),
            LeafLength {
                leaf,
                expected,
                actual,
            } => write!(
                f,
                "{leaf}: buffer is {actual} bytes, but its record says nbytes = {expected}"
            ),
            BadSegment {
                index,
                range,
                within,
            } => write!(
                f,
                "data segment {index} [{}, {}) is out of order, overlaps the one before, or lies \
                 outside the range [{}, {}) being written",
                range.0, range.1, within.0, within.1
            ),
            BufferLength {
                what,
                expected,
                actual,
            } => write!(f, "{what} is {actual} bytes, expected {expected}"),
            HeaderChecksum { stored, computed } => write!(
                f,
                "the header is damaged: its checksum (header_crc32c) is {stored:#010x}, but the \
                 prefix and header bytes give {computed:#010x}"
            ),
            LeafChecksums { leaves } => {
                let shown = 20;
                let noun = if leaves.len() == 1 { "leaf" } else { "leaves" };
                write!(
                    f,
                    "the file is damaged: {} {noun} whose bytes do not match the checksum \
                     (leaf_crc32c): ",
                    leaves.len()
                )?;
                for (k, leaf) in leaves.iter().take(shown).enumerate() {
                    let sep = if k == 0 { "" } else { ", " };
                    write!(f, "{sep}{leaf}")?;
                }
                if leaves.len() > shown {
                    write!(f, " and {} more", leaves.len() - shown)?;
                }
                Ok(())
            }
            NonzeroPadding { offset, what } => write!(
                f,
                "the file is damaged: byte {offset} lies in {what}, which must be zero, and is not"
            ),
            NoChecksums => write!(
                f,
                "the file has no checksums (it was written before eqx_msg 0.2.0), so it cannot be \
                 verified; load it without verify, and save it again to add them"
            ),
            BadChecksumField { reason } => write!(f, "header checksum fields: {reason}"),
            AllocFailed { bytes } => write!(f, "cannot allocate {bytes} bytes"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_python_class_names() {
        let e = Error::BadMagic {
            found: b"NOTEQX".to_vec(),
        };
        assert_eq!(e.kind(), "MagicError");
        assert!(e.to_string().contains("NOTEQX"));
        let e = Error::Misaligned {
            leaf: LeafRef::new(3, ".w"),
            offset: 65,
            alignment: 64,
        };
        assert_eq!(e.kind(), "LayoutError");
        let msg = e.to_string();
        assert!(msg.contains("leaf 3") && msg.contains("\".w\"") && msg.contains("65"));
    }
}
