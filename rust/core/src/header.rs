//! The msgpack header (FORMAT.md sections 2-3): decoding into typed records and validating them.

use crate::checksum;
use crate::dtype;
use crate::error::{Error, LeafRef, Result};
use crate::frame::{MAX_ALIGNMENT, MAX_NDIM, MIN_ALIGNMENT, VERSION};
use crate::msgpack::{Cursor, RawValue, Token};

/// What a leaf was when it was saved (its record's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeafKind {
    /// A `numpy.ndarray`.
    Numpy,
    /// A numpy scalar, stored as a 0-d array.
    NumpyScalar,
    /// A `jax.Array`.
    Jax,
    /// A typed PRNG key array; its key data is stored.
    Key,
    /// A `jax.ShapeDtypeStruct`: no bytes.
    Abstract,
}

impl LeafKind {
    /// The `kind` string of the record.
    pub fn name(self) -> &'static str {
        match self {
            LeafKind::Numpy => "numpy",
            LeafKind::NumpyScalar => "numpy_scalar",
            LeafKind::Jax => "jax",
            LeafKind::Key => "key",
            LeafKind::Abstract => "abstract",
        }
    }

    /// Parses a `kind` string.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "numpy" => LeafKind::Numpy,
            "numpy_scalar" => LeafKind::NumpyScalar,
            "jax" => LeafKind::Jax,
            "key" => LeafKind::Key,
            "abstract" => LeafKind::Abstract,
            _ => return None,
        })
    }

    /// Whether leaves of this kind store bytes in the data section.
    pub fn has_bytes(self) -> bool {
        self != LeafKind::Abstract
    }
}

/// One leaf record of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// The key path, as `jax.tree_util.keystr` writes it.
    pub path: String,
    /// What the leaf was.
    pub kind: LeafKind,
    /// The element type name (one of [`dtype::names`]).
    pub dtype: String,
    /// The dimensions.
    pub shape: Vec<u64>,
    /// Start of the bytes relative to the data section (`None` for abstract leaves).
    pub offset: Option<u64>,
    /// Length of the bytes (`None` for abstract leaves).
    pub nbytes: Option<u64>,
    /// JAX's weak type flag.
    pub weak_type: bool,
    /// The PRNG impl name of a key leaf.
    pub key_impl: Option<String>,
}

impl LeafSpec {
    /// The index and record of the leaf in `leaves` whose key path is `path` (a linear scan).
    pub fn find<'l>(leaves: &'l [LeafSpec], path: &str) -> Option<(usize, &'l LeafSpec)> {
        leaves
            .iter()
            .enumerate()
            .find(|(_, leaf)| leaf.path == path)
    }

    /// `[offset, offset + nbytes)` relative to the data section, if the leaf has bytes.
    ///
    /// Only meaningful on a validated header (the sum cannot overflow there).
    pub fn byte_range(&self) -> Option<(u64, u64)> {
        let (o, n) = (self.offset?, self.nbytes?);
        Some((o, o.checked_add(n)?))
    }
}

/// The decoded header of an eqx_msg file, borrowing the header bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Header<'a> {
    /// The header's `version` (equal to the prefix version).
    pub version: u16,
    /// Alignment of every leaf offset and of the data section.
    pub alignment: u64,
    /// Length of the data section.
    pub data_nbytes: u64,
    /// The leaf records, in tree index order.
    pub leaves: Vec<LeafSpec>,
    /// The root tree node (FORMAT.md section 4), checked but undecoded.
    pub tree: RawValue<'a>,
    /// The user's metadata, checked but undecoded.
    pub metadata: Option<RawValue<'a>>,
    /// The writer's software versions, checked but undecoded.
    pub writer: Option<RawValue<'a>>,
    /// The checksums (FORMAT.md section 9), if the file has them.
    pub checksums: Option<Checksums<'a>>,
}

/// The checksum fields of a header (`leaf_crc32c` and `header_crc32c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksums<'a> {
    /// `leaf_crc32c`: 4 little-endian bytes per leaf record.
    leaves: &'a [u8],
    /// `header_crc32c`.
    pub header: u32,
}

impl Checksums<'_> {
    /// The stored CRC32C of leaf record `i` (0 for an abstract leaf), if `i` is in range.
    pub fn leaf(&self, i: usize) -> Option<u32> {
        let b = self.leaves.get(4 * i..4 * i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Level of the header map's values (the map itself is level 1).
const ROOT_VALUES: usize = 2;
/// Level of a leaf record's values (header map, `leaves` array, record map, value).
const LEAF_VALUES: usize = 4;

const LEAF_KEYS: [&str; 8] = [
    "path",
    "kind",
    "dtype",
    "shape",
    "offset",
    "nbytes",
    "weak_type",
    "key_impl",
];
const ROOT_KEYS: [&str; 10] = [
    "format",
    "version",
    "alignment",
    "data_nbytes",
    "leaves",
    "tree",
    "metadata",
    "writer",
    checksum::LEAF_KEY,
    checksum::HEADER_KEY,
];

/// Index of a known header key in [`ROOT_KEYS`].
fn root_key(key: &str) -> Option<usize> {
    Some(match key {
        "format" => 0,
        "version" => 1,
        "alignment" => 2,
        "data_nbytes" => 3,
        "leaves" => 4,
        "tree" => 5,
        "metadata" => 6,
        "writer" => 7,
        checksum::LEAF_KEY => 8,
        checksum::HEADER_KEY => 9,
        _ => return None,
    })
}

/// Index of a known leaf record key in [`LEAF_KEYS`].
fn leaf_key(key: &str) -> Option<usize> {
    Some(match key {
        "path" => 0,
        "kind" => 1,
        "dtype" => 2,
        "shape" => 3,
        "offset" => 4,
        "nbytes" => 5,
        "weak_type" => 6,
        "key_impl" => 7,
        _ => return None,
    })
}

impl<'a> Header<'a> {
    /// Decodes a header (the msgpack bytes between the prefix and the padding).
    ///
    /// Checks msgpack validity (including UTF-8 and nesting depth everywhere, also inside tree
    /// and metadata), field types, required fields, duplicate keys in the header map and leaf
    /// records, `format`, `version`, leaf `kind`s and `dtype`s. Unknown keys are ignored.
    /// Call [`Header::validate`] for the layout rules.
    pub fn decode(bytes: &'a [u8]) -> Result<Header<'a>> {
        let mut c = Cursor::at(bytes, 0);
        let n = match c.next()? {
            Token::Map(n) => n,
            other => return Err(wrong("the header", "a msgpack map", &other)),
        };
        // Known keys are checked for repeats as they come; unknown ones are collected in `keys`.
        let mut keys: Vec<&'a str> = Vec::new();
        let mut at: [Option<usize>; 10] = [None; 10];
        let mut leaves = Vec::new();
        let mut raw: [Option<RawValue<'a>>; 3] = [None; 3];
        for _ in 0..n {
            let key = map_key(&mut c, || "the header map".to_owned())?;
            let known = root_key(key);
            if let Some(k) = known {
                if at[k].is_some() {
                    return Err(duplicate("the header map".to_owned(), key));
                }
                at[k] = Some(c.pos());
            }
            let in_field = |e: Error| e.in_field(key);
            match known {
                None => {
                    keys.push(key);
                    c.skip(ROOT_VALUES).map_err(|e| in_field(e.into()))?;
                }
                Some(4) => leaves = parse_leaves(&mut c).map_err(in_field)?,
                Some(k @ 5..=7) => {
                    raw[k - 5] = Some(c.raw(ROOT_VALUES).map_err(|e| in_field(e.into()))?);
                }
                Some(_) => c.skip(ROOT_VALUES).map_err(|e| in_field(e.into()))?,
            }
        }
        if c.pos() != bytes.len() {
            return Err(Error::HeaderTrailing {
                offset: c.pos() as u64,
                header_len: bytes.len() as u64,
            });
        }
        check_unique(&mut keys, || "the header map".to_owned())?;

        let field = |k: usize| format!("header field {:?}", ROOT_KEYS[k]);
        let token = |k: usize| -> Result<Token<'a>> {
            let pos = at[k].ok_or_else(|| Error::MissingField { field: field(k) })?;
            Ok(Cursor::at(bytes, pos).next()?)
        };
        match token(0)? {
            Token::Str("eqx_msg") => {}
            Token::Str(s) => {
                return Err(Error::BadFormat {
                    found: s.to_owned(),
                })
            }
            other => return Err(wrong(&field(0), "str", &other)),
        }
        let version = uint(&token(1)?, || field(1))?;
        if version != u64::from(VERSION) {
            return Err(Error::VersionMismatch {
                prefix: VERSION,
                header: version,
            });
        }
        let alignment = uint(&token(2)?, || field(2))?;
        let data_nbytes = uint(&token(3)?, || field(3))?;
        if at[4].is_none() {
            return Err(Error::MissingField { field: field(4) });
        }
        let [tree, metadata, writer] = raw;
        let tree = tree.ok_or_else(|| Error::MissingField { field: field(5) })?;
        // The root node is a map, or a bare leaf index when the whole tree is one array.
        if !tree.is_map() && !tree.is_uint() {
            let found = Cursor::at(tree.as_bytes(), 0).next()?;
            return Err(wrong(&field(5), "map or leaf index", &found));
        }
        let writer = writer.filter(|v| !v.is_nil()); // nil counts as absent (FORMAT.md section 2)
        if let Some(v) = writer.filter(|v| !v.is_map()) {
            let found = Cursor::at(v.as_bytes(), 0).next()?;
            return Err(wrong(&field(7), "map", &found));
        }
        let checksums = checksums(bytes, at[8], at[9], leaves.len())?;
        Ok(Header {
            version: VERSION,
            alignment,
            data_nbytes,
            leaves,
            tree,
            metadata,
            writer,
            checksums,
        })
    }

    /// Decodes and validates a header.
    pub fn decode_validated(bytes: &'a [u8]) -> Result<Header<'a>> {
        let h = Self::decode(bytes)?;
        h.validate()?;
        Ok(h)
    }

    /// Checks every layout rule of FORMAT.md section 3 (plus alignment and `key_impl` rules).
    pub fn validate(&self) -> Result<()> {
        if self.version != VERSION {
            return Err(Error::VersionMismatch {
                prefix: VERSION,
                header: self.version.into(),
            });
        }
        let a = self.alignment;
        if !a.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&a) {
            return Err(Error::BadAlignment { alignment: a });
        }
        // Writers lay leaves out in record order, so overlaps are first checked against the
        // previous range; only if the ranges are out of order are they collected and sorted.
        let mut in_order = true;
        let mut prev: Option<(u64, u64, usize)> = None;
        for (i, leaf) in self.leaves.iter().enumerate() {
            let lr = || LeafRef::new(i, &leaf.path);
            let expected = leaf_nbytes(i, leaf)?;
            match leaf.kind {
                LeafKind::Key if leaf.key_impl.is_none() => {
                    return Err(Error::BadKeyImpl {
                        leaf: lr(),
                        reason: "required for kind \"key\"",
                    })
                }
                LeafKind::Numpy | LeafKind::NumpyScalar | LeafKind::Jax
                    if leaf.key_impl.is_some() =>
                {
                    return Err(Error::BadKeyImpl {
                        leaf: lr(),
                        reason: "only allowed for kinds \"key\" and \"abstract\"",
                    })
                }
                LeafKind::NumpyScalar if !leaf.shape.is_empty() => {
                    return Err(Error::WrongType {
                        field: format!("{} field \"shape\"", lr()),
                        expected: "[] (a numpy_scalar is 0-d)",
                        found: format!("{:?}", leaf.shape),
                    })
                }
                _ => {}
            }
            if !leaf.kind.has_bytes() {
                if leaf.offset.is_some() || leaf.nbytes.is_some() {
                    return Err(Error::AbstractWithBytes { leaf: lr() });
                }
                continue;
            }
            let missing = |name: &str| Error::MissingField {
                field: format!("{} field {name:?}", lr()),
            };
            let offset = leaf.offset.ok_or_else(|| missing("offset"))?;
            let nbytes = leaf.nbytes.ok_or_else(|| missing("nbytes"))?;
            if nbytes != expected {
                return Err(Error::NbytesMismatch {
                    leaf: lr(),
                    nbytes,
                    expected,
                });
            }
            if offset % a != 0 {
                return Err(Error::Misaligned {
                    leaf: lr(),
                    offset,
                    alignment: a,
                });
            }
            match offset.checked_add(nbytes) {
                Some(end) if end <= self.data_nbytes => {
                    if nbytes > 0 {
                        match prev {
                            Some(p) if offset < p.0 => in_order = false,
                            Some(p) if offset < p.1 => {
                                return Err(self.overlap(p, (offset, end, i)))
                            }
                            _ => {}
                        }
                        prev = Some((offset, end, i));
                    }
                }
                _ => {
                    return Err(Error::OutOfBounds {
                        leaf: lr(),
                        offset,
                        nbytes,
                        data_nbytes: self.data_nbytes,
                    })
                }
            }
        }
        if in_order {
            return Ok(());
        }
        let mut ranges: Vec<(u64, u64, usize)> = self
            .leaves
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.byte_range().map(|(s, e)| (s, e, i)))
            .filter(|r| r.1 > r.0)
            .collect();
        ranges.sort_unstable();
        match ranges.windows(2).find(|w| w[1].0 < w[0].1) {
            Some(w) => Err(self.overlap(w[0], w[1])),
            None => Ok(()),
        }
    }

    /// The overlap error for two ranges `(start, end, leaf index)`, the first starting first.
    fn overlap(&self, a: (u64, u64, usize), b: (u64, u64, usize)) -> Error {
        let leaf = |i: usize| LeafRef::new(i, &self.leaves[i].path);
        Error::Overlap {
            first: leaf(a.2),
            first_range: (a.0, a.1),
            second: leaf(b.2),
            second_range: (b.0, b.1),
        }
    }
}

/// The checksum fields, given where their values start in the header (`None` if absent): both or
/// neither; `leaf_crc32c` a bin of 4 bytes per record; `header_crc32c` the header's last value,
/// encoded as a msgpack uint32 (FORMAT.md section 9). Nil is not "absent" here: it is refused.
fn checksums(
    bytes: &[u8],
    leaf_at: Option<usize>,
    header_at: Option<usize>,
    n_leaves: usize,
) -> Result<Option<Checksums<'_>>> {
    let bad = |reason: String| Error::BadChecksumField { reason };
    let (leaf_at, header_at) = match (leaf_at, header_at) {
        (None, None) => return Ok(None),
        (Some(l), Some(h)) => (l, h),
        (Some(_), None) => {
            return Err(bad(format!(
                "{:?} without {:?}",
                checksum::LEAF_KEY,
                checksum::HEADER_KEY
            )))
        }
        (None, Some(_)) => {
            return Err(bad(format!(
                "{:?} without {:?}",
                checksum::HEADER_KEY,
                checksum::LEAF_KEY
            )))
        }
    };
    let leaves = match Cursor::at(bytes, leaf_at).next()? {
        Token::Bin(b) if Some(b.len()) == n_leaves.checked_mul(4) => b,
        Token::Bin(b) => {
            return Err(bad(format!(
                "{:?} holds {} bytes, but the header has {n_leaves} leaf records (4 bytes each)",
                checksum::LEAF_KEY,
                b.len()
            )))
        }
        other => {
            return Err(wrong(
                &format!("header field {:?}", checksum::LEAF_KEY),
                "bin",
                &other,
            ))
        }
    };
    if header_at + 5 != bytes.len() || bytes[header_at] != 0xce {
        return Err(bad(format!(
            "{:?} must be the header's last value, a msgpack uint32 (0xce and 4 bytes)",
            checksum::HEADER_KEY
        )));
    }
    let b = &bytes[header_at + 1..];
    let header = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok(Some(Checksums { leaves, header }))
}

/// `storage_nbytes` of a leaf record, with errors naming the leaf.
fn leaf_nbytes(i: usize, leaf: &LeafSpec) -> Result<u64> {
    let lr = || LeafRef::new(i, &leaf.path);
    let bits = dtype::lookup(&leaf.dtype).ok_or_else(|| Error::UnknownDType {
        field: format!("{} field \"dtype\"", lr()),
        dtype: leaf.dtype.clone(),
    })?;
    if leaf.shape.len() > MAX_NDIM {
        return Err(Error::TooManyDims {
            field: lr().to_string(),
            ndim: leaf.shape.len(),
        });
    }
    dtype::nbytes_for_bits(bits, &leaf.shape).ok_or_else(|| Error::SizeOverflow {
        what: format!(
            "{}: the byte length of dtype {} and shape {:?}",
            lr(),
            leaf.dtype,
            leaf.shape
        ),
    })
}

/// Parses the `leaves` array, one record at a time, reusing one scratch key list.
fn parse_leaves(c: &mut Cursor<'_>) -> Result<Vec<LeafSpec>> {
    let n = match c.next()? {
        Token::Array(n) => n,
        other => return Err(wrong("header field \"leaves\"", "array of maps", &other)),
    };
    // A valid record takes at least 34 bytes: never reserve more than the header could hold.
    let mut leaves = Vec::with_capacity(n.min(c.remaining() / 32));
    let mut keys = Vec::with_capacity(16);
    for i in 0..n {
        leaves.push(parse_leaf(c, i, &mut keys)?);
    }
    Ok(leaves)
}

fn parse_leaf<'a>(c: &mut Cursor<'a>, i: usize, keys: &mut Vec<&'a str>) -> Result<LeafSpec> {
    let n = match c.next()? {
        Token::Map(n) => n,
        other => return Err(wrong(&format!("leaf {i}"), "a map (leaf record)", &other)),
    };
    // Read every value once: tokens of known fields are kept (a container's items are checked
    // and skipped; the shape's dims are re-read below), so the fields can then be interpreted
    // path first and errors can name the leaf's path.
    // Known keys are checked for repeats as they come; unknown ones are collected in `keys`.
    keys.clear();
    let mut tok: [Option<Token<'a>>; 8] = [None; 8];
    let mut shape_at = 0;
    for _ in 0..n {
        let key = map_key(c, || format!("leaf {i}"))?;
        match leaf_key(key) {
            Some(k) => {
                if tok[k].is_some() {
                    return Err(duplicate(format!("leaf {i}"), key));
                }
                if k == 3 {
                    shape_at = c.pos();
                }
                let t = c.next()?;
                c.skip_items(&t, LEAF_VALUES)?;
                tok[k] = Some(t);
            }
            None => {
                keys.push(key);
                c.skip(LEAF_VALUES)?;
            }
        }
    }
    check_unique(keys, || format!("leaf {i}"))?;
    let token = |k: usize| -> Result<Option<Token<'a>>> { Ok(tok[k]) };

    let path = match token(0)? {
        Some(Token::Str(s)) => s,
        Some(other) => return Err(wrong(&format!("leaf {i} field \"path\""), "str", &other)),
        None => {
            return Err(Error::MissingField {
                field: format!("leaf {i} field \"path\""),
            })
        }
    };
    let lr = || LeafRef::new(i, path);
    let field = |k: usize| format!("{} field {:?}", lr(), LEAF_KEYS[k]);
    let required = |k: usize| -> Result<Token<'a>> {
        token(k)?.ok_or_else(|| Error::MissingField { field: field(k) })
    };
    // Absent and nil both mean "not given".
    let optional =
        |k: usize| -> Result<Option<Token<'a>>> { Ok(token(k)?.filter(|t| *t != Token::Nil)) };
    let kind_name = str_field(&required(1)?, || field(1))?;
    let kind = LeafKind::from_name(kind_name).ok_or_else(|| Error::UnknownKind {
        leaf: lr(),
        kind: kind_name.to_owned(),
    })?;
    let dtype = str_field(&required(2)?, || field(2))?;
    if dtype::lookup(dtype).is_none() {
        return Err(Error::UnknownDType {
            field: field(2),
            dtype: dtype.to_owned(),
        });
    }
    let shape = match required(3)? {
        Token::Array(ndim) => {
            if ndim > MAX_NDIM {
                return Err(Error::TooManyDims {
                    field: lr().to_string(),
                    ndim,
                });
            }
            let mut dims = Cursor::at(c.buf(), shape_at);
            dims.next()?;
            let mut shape = Vec::with_capacity(ndim);
            for _ in 0..ndim {
                shape.push(uint(&dims.next()?, || field(3))?);
            }
            shape
        }
        other => return Err(wrong(&field(3), "array of non-negative ints", &other)),
    };
    let offset = optional(4)?.map(|t| uint(&t, || field(4))).transpose()?;
    let nbytes = optional(5)?.map(|t| uint(&t, || field(5))).transpose()?;
    let weak_type = match optional(6)? {
        None => false,
        Some(Token::Bool(b)) => b,
        Some(other) => return Err(wrong(&field(6), "bool", &other)),
    };
    let key_impl = optional(7)?
        .map(|t| str_field(&t, || field(7)).map(str::to_owned))
        .transpose()?;
    Ok(LeafSpec {
        path: path.to_owned(),
        kind,
        dtype: dtype.to_owned(),
        shape,
        offset,
        nbytes,
        weak_type,
        key_impl,
    })
}

/// Reads a map key, which must be a str.
fn map_key<'a>(c: &mut Cursor<'a>, map: impl Fn() -> String) -> Result<&'a str> {
    match c.next()? {
        Token::Str(s) => Ok(s),
        other => Err(Error::NonStringKey {
            map: map(),
            found: other.describe(),
        }),
    }
}

fn duplicate(map: String, key: &str) -> Error {
    Error::DuplicateKey {
        map,
        key: key.to_owned(),
    }
}

/// Fails if a key repeats (reorders `keys`).
fn check_unique(keys: &mut [&str], map: impl Fn() -> String) -> Result<()> {
    let dup = |k: &str| duplicate(map(), k);
    if keys.len() <= 16 {
        for (n, a) in keys.iter().enumerate() {
            if keys[n + 1..].contains(a) {
                return Err(dup(a));
            }
        }
    } else {
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(dup(w[0]));
        }
    }
    Ok(())
}

fn uint(t: &Token<'_>, field: impl Fn() -> String) -> Result<u64> {
    match *t {
        Token::UInt(u) => Ok(u),
        ref other => Err(wrong(&field(), "a non-negative int", other)),
    }
}

fn str_field<'a>(t: &Token<'a>, field: impl Fn() -> String) -> Result<&'a str> {
    match *t {
        Token::Str(s) => Ok(s),
        ref other => Err(wrong(&field(), "str", other)),
    }
}

fn wrong(field: &str, expected: &'static str, found: &Token<'_>) -> Error {
    Error::WrongType {
        field: field.to_owned(),
        expected,
        found: found.describe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_DEPTH;
    use crate::testutil::*;
    use rmpv::Value;

    #[test]
    fn decodes_a_good_header() {
        let b = enc(&good_header());
        let h = Header::decode_validated(&b).unwrap();
        assert_eq!(h.alignment, 64);
        assert_eq!(h.data_nbytes, 76);
        assert_eq!(h.leaves.len(), 3);
        assert_eq!(h.leaves[0].path, ".a");
        assert_eq!(h.leaves[0].shape, vec![3]);
        assert_eq!(h.leaves[1].byte_range(), Some((64, 76)));
        assert_eq!(h.leaves[2].kind, LeafKind::Abstract);
        assert_eq!(h.leaves[2].key_impl.as_deref(), Some("threefry2x32"));
        assert!(h.leaves[1].weak_type);
        assert!(h.tree.is_map() && h.writer.unwrap().is_map());
        let meta = h.metadata.unwrap().decode().unwrap();
        assert_eq!(meta, map(vec![("epoch", Value::from(3))]));
    }

    #[test]
    fn key_tables_agree() {
        for (i, k) in ROOT_KEYS.iter().enumerate() {
            assert_eq!(root_key(k), Some(i));
        }
        for (i, k) in LEAF_KEYS.iter().enumerate() {
            assert_eq!(leaf_key(k), Some(i));
        }
        assert_eq!(root_key("sharding"), None);
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let v = with_root(good_header(), "future_key", Value::from(vec![Value::Nil]));
        let v = with_leaf(v, 0, "sharding", map(vec![("spec", Value::Nil)]));
        Header::decode_validated(&enc(&v)).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let v = with_leaf(good_header(), 1, "shape", Value::from("x"));
        let e = Header::decode(&enc(&v)).unwrap_err();
        assert_eq!(e.kind(), "HeaderError");
        let msg = e.to_string();
        assert!(
            msg.contains("leaf 1") && msg.contains(".b") && msg.contains("shape"),
            "{msg}"
        );
    }

    #[test]
    fn missing_and_wrong_fields() {
        for key in [
            "format",
            "version",
            "alignment",
            "data_nbytes",
            "leaves",
            "tree",
        ] {
            let e = Header::decode(&enc(&without_root(good_header(), key))).unwrap_err();
            assert_eq!(e.kind(), "HeaderError", "{key}");
            assert!(e.to_string().contains(key));
        }
        for key in ["path", "kind", "dtype", "shape"] {
            let e = Header::decode(&enc(&without_leaf(good_header(), 0, key))).unwrap_err();
            assert_eq!(e.kind(), "HeaderError", "{key}");
        }
        let b = enc(&without_leaf(good_header(), 0, "offset"));
        let e = Header::decode_validated(&b).unwrap_err();
        assert_eq!(e.kind(), "HeaderError");
        let v = with_root(good_header(), "format", Value::from("other"));
        assert_eq!(Header::decode(&enc(&v)).unwrap_err().kind(), "HeaderError");
        let v = with_root(good_header(), "alignment", Value::from(-64));
        assert_eq!(Header::decode(&enc(&v)).unwrap_err().kind(), "HeaderError");
        let v = with_leaf(good_header(), 0, "kind", Value::from("torch"));
        assert_eq!(Header::decode(&enc(&v)).unwrap_err().kind(), "HeaderError");
        let v = with_root(good_header(), "tree", Value::from("x"));
        assert_eq!(Header::decode(&enc(&v)).unwrap_err().kind(), "HeaderError");
        let v = with_root(good_header(), "tree", Value::from(-1));
        assert_eq!(Header::decode(&enc(&v)).unwrap_err().kind(), "HeaderError");
        let v = with_root(good_header(), "tree", Value::from(0));
        assert!(Header::decode(&enc(&v)).is_ok());
        assert_eq!(
            Header::decode(&enc(&Value::from(1))).unwrap_err().kind(),
            "HeaderError"
        );
    }

    #[test]
    fn nil_means_absent() {
        let v = with_leaf(good_header(), 2, "offset", Value::Nil);
        let v = with_leaf(v, 0, "key_impl", Value::Nil);
        let v = with_leaf(v, 0, "weak_type", Value::Nil);
        Header::decode_validated(&enc(&v)).unwrap();
    }

    #[test]
    fn key_impl_rules() {
        let v = with_leaf(good_header(), 0, "key_impl", Value::from("rbg"));
        let b = enc(&v);
        let h = Header::decode(&b).unwrap();
        assert_eq!(h.validate().unwrap_err().kind(), "HeaderError");
        let v = with_leaf(good_header(), 0, "kind", Value::from("key"));
        let b = enc(&v);
        let h = Header::decode(&b).unwrap();
        assert_eq!(h.validate().unwrap_err().kind(), "HeaderError");
        let v = with_leaf(v, 0, "key_impl", Value::from("rbg"));
        Header::decode_validated(&enc(&v)).unwrap();
    }

    #[test]
    fn a_numpy_scalar_is_0_d() {
        // Leaf 0 is float32 [3] at offset 0: as a numpy_scalar it must have shape [].
        let v = with_leaf(good_header(), 0, "kind", Value::from("numpy_scalar"));
        let e = Header::decode_validated(&enc(&v)).unwrap_err();
        assert_eq!(e.kind(), "HeaderError");
        assert!(
            e.to_string()
                .contains("\"shape\": expected [] (a numpy_scalar is 0-d)"),
            "{e}"
        );
        let v = with_leaf(v, 0, "shape", Value::Array(vec![]));
        let v = with_leaf(v, 0, "nbytes", Value::from(4));
        Header::decode_validated(&enc(&v)).unwrap();
    }

    #[test]
    fn depth_limit_is_exact() {
        // The header map is level 1; metadata nested so the deepest container is at `levels`.
        let nested = |levels: usize| {
            let mut v = Value::from("leaf string");
            for _ in 0..levels - 1 {
                v = Value::Array(vec![v]);
            }
            with_root(good_header(), "metadata", v)
        };
        Header::decode_validated(&enc(&nested(MAX_DEPTH))).unwrap();
        for levels in [MAX_DEPTH + 1, MAX_DEPTH + 2, MAX_DEPTH + 50] {
            let e = Header::decode(&enc(&nested(levels))).unwrap_err();
            assert_eq!(e.kind(), "LimitError", "{levels}: {e}");
            assert!(
                e.to_string().contains("in header field \"metadata\": "),
                "{e}"
            );
        }
    }

    #[test]
    fn depth_errors_name_the_header_field() {
        let mut deep = Value::from(1);
        for _ in 0..MAX_DEPTH {
            deep = Value::Array(vec![deep]);
        }
        let in_a_leaf = with_leaf(good_header(), 0, "extra", deep.clone());
        let cases = ["tree", "writer", "an unknown key"]
            .map(|field| (field, with_root(good_header(), field, deep.clone())));
        for (field, v) in [("leaves", in_a_leaf)].into_iter().chain(cases) {
            let e = Header::decode(&enc(&v)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("in header field {field:?}: ")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn many_keys_duplicate_detection() {
        let mut v = good_header();
        for n in 0..40 {
            v = with_root(v, &format!("k{n}"), Value::Nil);
        }
        Header::decode_validated(&enc(&v)).unwrap();
        if let Value::Map(m) = &mut v {
            m.push((Value::from("k7"), Value::Nil));
        }
        let e = Header::decode(&enc(&v)).unwrap_err();
        assert!(
            matches!(e, Error::DuplicateKey { ref key, .. } if key == "k7"),
            "{e}"
        );
    }
}
