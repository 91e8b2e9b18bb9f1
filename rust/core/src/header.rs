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
    /// How the array was laid out over devices (FORMAT.md section 7), checked.
    pub sharding: Option<Box<Sharding>>,
}

/// A leaf's `sharding` record (FORMAT.md section 7): a `NamedSharding`, checked against the leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharding {
    /// The mesh's axis names, distinct.
    pub mesh_axes: Vec<String>,
    /// The size of each mesh axis (each >= 1).
    pub mesh_shape: Vec<u64>,
    /// The device id at each mesh place, in C order; distinct.
    pub device_ids: Vec<i128>,
    /// How each leading dimension is split (at most one entry per dimension).
    pub spec: Vec<SpecEntry>,
    /// The memory kind, if recorded.
    pub memory_kind: Option<String>,
}

/// One entry of a sharding's `spec`: the mesh axes a dimension is split over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecEntry {
    /// `nil`: not split.
    Replicated,
    /// One axis name.
    Axis(String),
    /// An array of axis names (possibly empty).
    Axes(Vec<String>),
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

const LEAF_KEYS: [&str; 9] = [
    "path",
    "kind",
    "dtype",
    "shape",
    "offset",
    "nbytes",
    "weak_type",
    "key_impl",
    "sharding",
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
        "sharding" => 8,
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
                // Ext values may occur in metadata only (FORMAT.md section 2).
                Some(6) => {
                    let value = c.allowing_ext(|c| c.raw(ROOT_VALUES));
                    raw[1] = Some(value.map_err(|e| in_field(e.into()))?);
                }
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
        // (What the tree's nodes may be, the root's included, is `tree::check`'s, in `validate`.)
        let writer = writer.filter(|v| !v.is_nil()); // nil counts as absent (FORMAT.md section 2)
        if let Some(v) = writer {
            let mut w = Cursor::at(v.as_bytes(), 0);
            match w.next()? {
                Token::Map(n) => {
                    for _ in 0..n {
                        map_key(&mut w, || field(7))?;
                        w.skip(ROOT_VALUES + 1)?;
                    }
                }
                found => return Err(wrong(&field(7), "map", &found)),
            }
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

    /// Checks every layout rule of FORMAT.md section 3 (plus alignment and `key_impl` rules), then
    /// the tree's structural rules (section 4, [`crate::tree::check`]).
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
            return crate::tree::check(self.tree, self.leaves.len());
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
            None => crate::tree::check(self.tree, self.leaves.len()),
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
    let nbytes = dtype::nbytes_for_bits(bits, &leaf.shape).ok_or_else(|| Error::SizeOverflow {
        what: format!(
            "{}: the byte length of dtype {} and shape {:?}",
            lr(),
            leaf.dtype,
            leaf.shape
        ),
    })?;
    // numpy and XLA refuse a shape whose item size (packed dtypes unpack to 1-byte items) times
    // its nonzero dimensions passes 2**63 - 1, even with no elements: every kind, abstract too.
    let itemsize = u64::from(bits.div_ceil(8).max(1));
    let fits = leaf
        .shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(itemsize, |acc, &d| acc.checked_mul(d))
        .is_some_and(|size| size <= i64::MAX as u64);
    if !fits {
        return Err(Error::ShapeTooLarge {
            leaf: lr(),
            dtype: leaf.dtype.clone(),
            shape: leaf.shape.clone(),
        });
    }
    Ok(nbytes)
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
    let mut tok: [Option<Token<'a>>; 9] = [None; 9];
    let mut shape_at = 0;
    let mut sharding_at = 0;
    for _ in 0..n {
        let key = map_key(c, || format!("leaf {i}"))?;
        match leaf_key(key) {
            Some(k) => {
                if tok[k].is_some() {
                    return Err(duplicate(format!("leaf {i}"), key));
                }
                if k == 3 {
                    shape_at = c.pos();
                } else if k == 8 {
                    sharding_at = c.pos();
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
    let sharding = match optional(8)? {
        None => None,
        Some(_) => {
            // The rank the spec splits: a key array's is its key data's without the impl's dims.
            let rank = match key_impl.as_deref().map(key_data_ndim) {
                Some(Some(k)) => shape.len().saturating_sub(k),
                _ => shape.len(),
            };
            let record = parse_sharding(Cursor::at(c.buf(), sharding_at), &shape[..rank])
                .map_err(|reason| Error::BadSharding { leaf: lr(), reason })?;
            Some(Box::new(record))
        }
    };
    Ok(LeafSpec {
        path: path.to_owned(),
        kind,
        dtype: dtype.to_owned(),
        shape,
        offset,
        nbytes,
        weak_type,
        key_impl,
        sharding,
    })
}

/// The number of trailing key data dimensions of a PRNG impl FORMAT.md section 3 names (`None`
/// for another name: eqx_msg's Python side, where JAX knows the impls, refuses one it lacks).
fn key_data_ndim(key_impl: &str) -> Option<usize> {
    matches!(key_impl, "threefry2x32" | "rbg" | "unsafe_rbg").then_some(1)
}

/// Checks a leaf's `sharding` record (FORMAT.md section 7), read from `c` (already checked as
/// msgpack), against `dims`, the dimensions of the array it lays out. `Err` says what is wrong.
fn parse_sharding(mut c: Cursor<'_>, dims: &[u64]) -> std::result::Result<Sharding, String> {
    const KEYS: [&str; 5] = [
        "mesh_axes",
        "mesh_shape",
        "device_ids",
        "spec",
        "memory_kind",
    ];
    let syntax = |e: crate::msgpack::SyntaxError| Error::from(e).to_string();
    let n = match c.next().map_err(syntax)? {
        Token::Map(n) => n,
        other => return Err(format!("expected a map, found {}", other.describe())),
    };
    // Where each known key's value starts; unknown keys are skipped (and checked for repeats).
    let mut at: [Option<usize>; 5] = [None; 5];
    let mut unknown: Vec<&str> = Vec::new();
    for _ in 0..n {
        let key = match c.next().map_err(syntax)? {
            Token::Str(s) => s,
            other => return Err(format!("a non-string key ({})", other.describe())),
        };
        match KEYS.iter().position(|k| *k == key) {
            Some(k) if at[k].is_some() => return Err(format!("the key {key:?} more than once")),
            Some(k) => at[k] = Some(c.pos()),
            None => unknown.push(key),
        }
        c.skip(LEAF_VALUES + 1).map_err(syntax)?;
    }
    check_unique(&mut unknown, String::new).map_err(|e| match e {
        Error::DuplicateKey { key, .. } => format!("the key {key:?} more than once"),
        other => other.to_string(),
    })?;
    // The value of key `k` (`None` if absent or nil), as a cursor after its first token.
    let value = |k: usize| -> std::result::Result<Option<(Token<'_>, Cursor<'_>)>, String> {
        let Some(pos) = at[k] else { return Ok(None) };
        let mut v = Cursor::at(c.buf(), pos);
        Ok(match v.next().map_err(syntax)? {
            Token::Nil => None,
            t => Some((t, v)),
        })
    };
    let array = |k: usize| -> std::result::Result<(usize, Cursor<'_>), String> {
        match value(k)? {
            Some((Token::Array(n), v)) => Ok((n, v)),
            Some((other, _)) => Err(format!(
                "{:?}: expected an array, found {}",
                KEYS[k],
                other.describe()
            )),
            None => Err(format!("{:?} is missing", KEYS[k])),
        }
    };
    let (n_axes, mut v) = array(0)?;
    let mut axes: Vec<&str> = Vec::with_capacity(n_axes);
    for _ in 0..n_axes {
        match v.next().map_err(syntax)? {
            Token::Str(s) => axes.push(s),
            other => {
                return Err(format!(
                    "\"mesh_axes\": expected str, found {}",
                    other.describe()
                ))
            }
        }
    }
    // The axes by name, with their positions: linear-logarithmic in a mesh of many axes.
    let mut by_name: Vec<(&str, usize)> = axes.iter().copied().zip(0..).collect();
    by_name.sort_unstable();
    if let Some(w) = by_name.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "\"mesh_axes\" names the axis {:?} more than once",
            w[0].0
        ));
    }
    let (n_sizes, mut v) = array(1)?;
    if n_sizes != n_axes {
        return Err(format!(
            "\"mesh_shape\" has {n_sizes} entries for the {n_axes} entries of \"mesh_axes\""
        ));
    }
    let mut sizes = Vec::with_capacity(n_sizes);
    for _ in 0..n_sizes {
        match v.next().map_err(syntax)? {
            Token::UInt(s) if s >= 1 => sizes.push(s),
            other => {
                return Err(format!(
                    "\"mesh_shape\": expected an int >= 1, found {}",
                    other.describe()
                ))
            }
        }
    }
    let (n_ids, mut v) = array(2)?;
    // The mesh's places: computed only up to the number of ids (a huge mesh is not multiplied out).
    let places = sizes.iter().try_fold(1u64, |p, &s| {
        p.checked_mul(s).filter(|&p| p <= n_ids as u64)
    });
    if places != Some(n_ids as u64) {
        let shape = format!(
            "{:?}{}",
            &sizes[..sizes.len().min(8)],
            if sizes.len() > 8 { "..." } else { "" }
        );
        let has = places.map_or("more places than that".to_owned(), |p| {
            format!("{p} places")
        });
        return Err(format!(
            "\"device_ids\" must hold one id per mesh place: it holds {n_ids}, but a mesh of \
             shape {shape} has {has}"
        ));
    }
    let mut device_ids: Vec<i128> = Vec::with_capacity(n_ids);
    for _ in 0..n_ids {
        match v.next().map_err(syntax)? {
            Token::UInt(u) => device_ids.push(i128::from(u)),
            Token::NegInt(i) => device_ids.push(i128::from(i)),
            other => {
                return Err(format!(
                    "\"device_ids\": expected int, found {}",
                    other.describe()
                ))
            }
        }
    }
    let mut ids = device_ids.clone();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "\"device_ids\" holds the id {} more than once",
            w[0]
        ));
    }
    let (n_spec, mut v) = array(3)?;
    if n_spec > dims.len() {
        return Err(format!(
            "\"spec\" has {n_spec} entries, more than the {} dimensions of the array",
            dims.len()
        ));
    }
    let mut used = vec![false; axes.len()];
    let mut names: Vec<&str> = Vec::new();
    let mut spec = Vec::with_capacity(n_spec);
    for (d, &dim) in dims.iter().take(n_spec).enumerate() {
        // The axes dimension `d` is split over: nil, one axis name, or an array of them.
        names.clear();
        let not_an_entry = |t: &Token<'_>| {
            format!(
                "\"spec\" entry {d}: expected nil, an axis name or an array of axis names, found {}",
                t.describe()
            )
        };
        let one = match v.next().map_err(syntax)? {
            Token::Nil => true,
            Token::Str(s) => {
                names.push(s);
                true
            }
            Token::Array(n) => {
                for _ in 0..n {
                    match v.next().map_err(syntax)? {
                        Token::Str(s) => names.push(s),
                        other => return Err(not_an_entry(&other)),
                    }
                }
                false
            }
            other => return Err(not_an_entry(&other)),
        };
        spec.push(match (one, names.first()) {
            (true, None) => SpecEntry::Replicated,
            (true, Some(name)) => SpecEntry::Axis((*name).to_owned()),
            (false, _) => SpecEntry::Axes(names.iter().map(|n| (*n).to_owned()).collect()),
        });
        let mut parts: u64 = 1;
        for name in &names {
            let found = by_name.binary_search_by(|(x, _)| x.cmp(name));
            let Ok(a) = found.map(|k| by_name[k].1) else {
                return Err(format!(
                    "\"spec\" entry {d} names {name:?}, which is not one of the mesh axes {axes:?}"
                ));
            };
            if std::mem::replace(&mut used[a], true) {
                return Err(format!(
                    "\"spec\" names the mesh axis {name:?} more than once"
                ));
            }
            // A product of distinct axes' sizes divides the number of places: no overflow.
            parts = parts.saturating_mul(sizes[a]);
        }
        if dim % parts != 0 {
            return Err(format!(
                "\"spec\" entry {d} splits dimension {d} ({dim}) into {parts} parts, which is \
                 uneven: every split must be even"
            ));
        }
    }
    let memory_kind = match value(4)? {
        None => None,
        Some((Token::Str(s), _)) => Some(s.to_owned()),
        Some((other, _)) => {
            return Err(format!(
                "\"memory_kind\": expected str or nil, found {}",
                other.describe()
            ))
        }
    };
    Ok(Sharding {
        mesh_axes: axes.iter().map(|a| (*a).to_owned()).collect(),
        mesh_shape: sizes,
        device_ids,
        spec,
        memory_kind,
    })
}

/// Reads a map key, which must be a str.
pub(crate) fn map_key<'a>(c: &mut Cursor<'a>, map: impl Fn() -> String) -> Result<&'a str> {
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
pub(crate) fn check_unique(keys: &mut [&str], map: impl Fn() -> String) -> Result<()> {
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
        let v = with_leaf(v, 0, "future_key", map(vec![("spec", Value::Nil)]));
        let v = with_leaf(v, 1, "sharding", with_map(mesh(), "future_key", Value::Nil));
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
        for bad in [Value::from("x"), Value::from(-1), Value::from(0)] {
            // (the root's node rules are checked with the rest of the tree, in validate)
            let v = with_root(good_header(), "tree", bad);
            let e = Header::decode_validated(&enc(&v)).unwrap_err();
            assert_eq!(e.kind(), "HeaderError", "{e}");
        }
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

    fn strs(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|&s| Value::from(s)).collect())
    }

    fn ints(items: &[i64]) -> Value {
        Value::Array(items.iter().map(|&i| Value::from(i)).collect())
    }

    /// A sharding record: 4 x 2 mesh ("x", "y"), devices 0..8, dimension 0 split over "x".
    fn mesh() -> Value {
        map(vec![
            ("mesh_axes", strs(&["x", "y"])),
            ("mesh_shape", ints(&[4, 2])),
            ("device_ids", ints(&[0, 1, 2, 3, 4, 5, 6, 7])),
            ("spec", strs(&["x"])),
            ("memory_kind", Value::Nil),
        ])
    }

    /// The verdict on leaf 1 (jax int4 [24]) sharded as `record`.
    fn sharded(record: Value) -> Result<()> {
        let b = enc(&with_leaf(good_header(), 1, "sharding", record));
        Header::decode_validated(&b).map(|_| ())
    }

    #[test]
    fn a_sharding_record_is_kept_as_read() {
        let ids = ints(&[7, -1, 2, 3, 4, 5, 6, 0]); // any distinct ints, in mesh order
        let record = with_map(
            with_map(mesh(), "device_ids", ids),
            "memory_kind",
            "device".into(),
        );
        let record = with_map(record, "spec", Value::Array(vec![strs(&["y", "x"])]));
        let b = enc(&with_leaf(good_header(), 1, "sharding", record));
        let h = Header::decode_validated(&b).unwrap();
        let got = h.leaves[1].sharding.as_deref().unwrap();
        assert_eq!(got.mesh_axes, ["x", "y"]);
        assert_eq!(got.mesh_shape, [4, 2]);
        assert_eq!(got.device_ids, [7, -1, 2, 3, 4, 5, 6, 0]);
        assert_eq!(got.spec, [SpecEntry::Axes(vec!["y".into(), "x".into()])]);
        assert_eq!(got.memory_kind.as_deref(), Some("device"));
        let spec = Value::Array(vec![Value::Nil, Value::from("x")]);
        let two_d = with_leaf(good_header(), 0, "shape", ints(&[3, 4]));
        let two_d = with_leaf(two_d, 0, "nbytes", Value::from(48));
        let b = enc(&with_leaf(
            two_d,
            0,
            "sharding",
            with_map(mesh(), "spec", spec),
        ));
        let h = Header::decode(&b).unwrap();
        let got = h.leaves[0].sharding.as_deref().unwrap();
        assert_eq!(
            got.spec,
            [SpecEntry::Replicated, SpecEntry::Axis("x".into())]
        );
        assert_eq!(got.memory_kind, None);
        assert!(h.leaves[2].sharding.is_none());
    }

    #[test]
    fn sharding_records_are_checked() {
        sharded(mesh()).unwrap();
        sharded(Value::Nil).unwrap(); // nil counts as absent
        let spec = |entries: Vec<Value>| with_map(mesh(), "spec", Value::Array(entries));
        sharded(spec(vec![])).unwrap();
        sharded(spec(vec![strs(&["x", "y"])])).unwrap(); // 24 over 8 places
        sharded(spec(vec![strs(&[])])).unwrap();
        sharded(with_map(mesh(), "memory_kind", Value::from("device"))).unwrap();
        sharded(with_map(
            mesh(),
            "device_ids",
            ints(&[7, 6, 5, 4, 3, 2, 1, -1]),
        ))
        .unwrap();
        let bad = [
            (Value::from(3), "expected a map"),
            (without_map(mesh(), "spec"), "\"spec\" is missing"),
            (
                with_map(mesh(), "mesh_axes", Value::Nil),
                "\"mesh_axes\" is missing",
            ),
            (
                with_map(mesh(), "mesh_axes", strs(&["x", "x"])),
                "more than once",
            ),
            (with_map(mesh(), "mesh_axes", ints(&[1, 2])), "expected str"),
            (
                with_map(mesh(), "mesh_shape", ints(&[8])),
                "1 entries for the 2",
            ),
            (with_map(mesh(), "mesh_shape", ints(&[8, 0])), "an int >= 1"),
            (
                with_map(
                    mesh(),
                    "mesh_shape",
                    Value::Array(vec![Value::from(4.0), Value::from(2)]),
                ),
                "an int >= 1",
            ),
            (
                with_map(mesh(), "mesh_shape", ints(&[4, 4])),
                "holds 8, but a mesh of shape [4, 4] has more places",
            ),
            (
                with_map(mesh(), "mesh_shape", ints(&[1, 1])),
                "has 1 places",
            ),
            (
                with_map(mesh(), "device_ids", ints(&[0, 1, 2, 3, 4, 5, 6, 6])),
                "the id 6 more than once",
            ),
            (
                with_map(
                    mesh(),
                    "device_ids",
                    Value::Array(vec![Value::from(true); 8]),
                ),
                "expected int",
            ),
            (spec(vec![Value::from("z")]), "not one of the mesh axes"),
            (spec(vec![Value::from(1)]), "found int 1"),
            (spec(vec![Value::Array(vec![Value::Nil])]), "found nil"),
            (spec(vec![strs(&["x", "y", "x"])]), "more than once"),
            (
                spec(vec![Value::Nil, Value::Nil]),
                "more than the 1 dimensions",
            ),
            (
                spec(vec![Value::from("y"), Value::Nil]),
                "more than the 1 dimensions",
            ),
            (
                with_map(mesh(), "memory_kind", Value::from(1)),
                "str or nil",
            ),
            (
                Value::Map(vec![(Value::from(1), Value::Nil)]),
                "non-string key",
            ),
        ];
        for (record, needle) in bad {
            let e = sharded(record.clone()).unwrap_err();
            assert_eq!(e.kind(), "HeaderError", "{record}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("leaf 1 (path \".b\") field \"sharding\"") && msg.contains(needle),
                "{record}: {msg}"
            );
        }
        // A repeated key, known or not (rmpv writes maps as given).
        for key in ["spec", "other"] {
            let mut m = with_map(mesh(), "other", Value::Nil);
            if let Value::Map(entries) = &mut m {
                entries.push((Value::from(key), Value::Nil));
            }
            let e = sharded(m).unwrap_err().to_string();
            assert!(
                e.contains(&format!("the key {key:?} more than once")),
                "{e}"
            );
        }
    }

    #[test]
    fn uneven_splits_are_refused() {
        // Dimension 0 of leaf 1 has 24 entries: over "y" (2) and "x" (4) even, over 16 not.
        let spec = |entries: Vec<Value>| with_map(mesh(), "spec", Value::Array(entries));
        sharded(spec(vec![Value::from("y")])).unwrap();
        let m = with_map(spec(vec![Value::from("x")]), "mesh_shape", ints(&[8, 1]));
        sharded(m).unwrap();
        let m = with_map(spec(vec![Value::from("x")]), "mesh_shape", ints(&[16, 1]));
        let m = with_map(m, "device_ids", ints(&(0..16).collect::<Vec<_>>()));
        let e = sharded(m).unwrap_err().to_string();
        assert!(e.contains("splits dimension 0 (24) into 16 parts"), "{e}");
        // A zero-size dimension splits evenly over any number of parts.
        let v = with_leaf(good_header(), 0, "shape", ints(&[0]));
        let v = with_leaf(v, 0, "nbytes", Value::from(0));
        let m = with_map(mesh(), "spec", Value::Array(vec![strs(&["x", "y"])]));
        Header::decode_validated(&enc(&with_leaf(v, 0, "sharding", m))).unwrap();
    }

    #[test]
    fn a_key_arrays_spec_covers_the_key_array_not_its_data() {
        // Leaf 2: an abstract threefry2x32 key of data shape [2], so a 0-d key array.
        let v = with_leaf(good_header(), 2, "shape", ints(&[8, 2]));
        Header::decode_validated(&enc(&with_leaf(v.clone(), 2, "sharding", mesh()))).unwrap();
        let two = with_map(
            mesh(),
            "spec",
            Value::Array(vec![Value::from("x"), Value::Nil]),
        );
        let e = Header::decode(&enc(&with_leaf(v, 2, "sharding", two))).unwrap_err();
        assert!(e.to_string().contains("more than the 1 dimensions"), "{e}");
    }

    #[test]
    fn ext_values_occur_only_in_metadata() {
        let ext = Value::Ext(5, vec![1, 2]);
        let meta = with_root(good_header(), "metadata", Value::Array(vec![ext.clone()]));
        Header::decode_validated(&enc(&meta)).unwrap();
        let value = map(vec![("t", Value::from("value")), ("v", ext.clone())]);
        let tree = map(vec![
            ("t", Value::from("list")),
            ("c", Value::Array(vec![value])),
        ]);
        let cases = [
            ("tree", with_root(good_header(), "tree", tree)),
            (
                "writer",
                with_root(good_header(), "writer", map(vec![("jax", ext.clone())])),
            ),
            ("leaves", with_leaf(good_header(), 0, "path", ext.clone())),
            (
                "leaves",
                with_leaf(good_header(), 0, "future_key", ext.clone()),
            ),
            (
                "leaves",
                with_leaf(
                    good_header(),
                    1,
                    "sharding",
                    with_map(mesh(), "spec", ext.clone()),
                ),
            ),
            (
                "future_key",
                with_root(good_header(), "future_key", ext.clone()),
            ),
        ];
        for (field, v) in cases {
            let e = Header::decode(&enc(&v)).unwrap_err();
            assert_eq!(e.kind(), "HeaderError", "{field}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("in header field {field:?}: an ext value (type 5)"))
                    && msg.contains("only in the header's metadata"),
                "{field}: {msg}"
            );
        }
    }

    #[test]
    fn writer_keys_are_strings() {
        let w = Value::Map(vec![(Value::from(1), Value::from("0.1.0"))]);
        let e = Header::decode(&enc(&with_root(good_header(), "writer", w))).unwrap_err();
        assert_eq!(e.kind(), "HeaderError");
        assert!(e.to_string().contains("non-string key"), "{e}");
        let w = map(vec![("jax", Value::from(3)), ("x", Value::Array(vec![]))]);
        Header::decode_validated(&enc(&with_root(good_header(), "writer", w))).unwrap();
    }

    #[test]
    fn shapes_numpy_cannot_make_are_refused_for_every_kind() {
        // Leaf 0 is numpy float32, leaf 2 abstract uint32: both as an empty [2**63, 0] or less.
        for (i, nbytes) in [(0, Some(0)), (2, None)] {
            let ok = [
                vec![1u64 << 60, 0],
                vec![0, (1 << 61) - 1],
                vec![1 << 40, 1 << 20, 0],
            ];
            let too_large = [
                vec![1u64 << 63, 0],
                vec![0, 1 << 61],
                vec![1 << 40, 1 << 40, 0],
            ];
            let with_shape = |shape: &[u64]| {
                let dims = Value::Array(shape.iter().map(|&d| Value::from(d)).collect());
                let v = with_leaf(good_header(), i, "shape", dims);
                let v = with_leaf(v, i, "key_impl", Value::Nil);
                let v = with_leaf(
                    v,
                    i,
                    "kind",
                    Value::from(if i == 0 { "numpy" } else { "abstract" }),
                );
                let v = match nbytes {
                    Some(n) => with_leaf(v, i, "nbytes", Value::from(n)),
                    None => v,
                };
                Header::decode_validated(&enc(&v)).map(|_| ())
            };
            for shape in ok {
                with_shape(&shape).unwrap();
            }
            for shape in too_large {
                let e = with_shape(&shape).unwrap_err();
                assert_eq!(e.kind(), "LimitError", "{shape:?}: {e}");
                assert!(e.to_string().contains("too large for a numpy array"), "{e}");
            }
        }
        // int4 unpacks to 1-byte items: [0, 2**62] fits, as float32 it does not.
        let v = with_leaf(
            good_header(),
            1,
            "shape",
            Value::Array(vec![Value::from(0), Value::from(1u64 << 62)]),
        );
        let v = with_leaf(v, 1, "nbytes", Value::from(0));
        Header::decode_validated(&enc(&v)).unwrap();
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
