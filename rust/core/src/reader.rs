//! Zero-copy reading of a whole eqx_msg file held in memory or memory-mapped.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

use crate::checksum;
use crate::error::{Error, LeafRef, Result};
use crate::frame::{data_start, parse_prefix, PREFIX_LEN};
use crate::header::{Header, LeafSpec};

/// The framing of a file, checked: its decoded, validated header, and where the data section starts.
#[derive(Debug)]
pub struct Head<'a> {
    /// The decoded header.
    pub header: Header<'a>,
    /// Length of the msgpack header in bytes.
    pub header_len: usize,
    /// File offset of the data section.
    pub data_start: usize,
}

/// Checks the framing of a file of `file_len` bytes whose first bytes are `head` (its prefix and
/// header; the rest of the file may follow): prefix, header (decoded and validated), and that the
/// header's data section ends exactly at `file_len`.
///
/// [`Reader::new`] checks a whole file with it; a reader that must not see the header change under it
/// (a shared map) checks a copy of the first bytes with it, and keeps using that copy.
pub fn parse_head(head: &[u8], file_len: u64) -> Result<Head<'_>> {
    let (_version, header_len) = parse_prefix(head)?;
    // `parse_prefix` capped header_len at MAX_HEADER_LEN, so this cannot overflow.
    let header_end = PREFIX_LEN as u64 + header_len;
    if header_end > head.len() as u64 || header_end > file_len {
        return Err(Error::TruncatedHeader {
            header_len,
            file_len,
        });
    }
    // header_end <= head.len(), so it fits in usize.
    let header_end = header_end as usize;
    let header = match Header::decode_validated(&head[PREFIX_LEN..header_end]) {
        Ok(header) => header,
        // A damaged sealed header is reported as damage, not as whatever the damage made of it.
        Err(e) => return Err(damaged_header(&head[..header_end]).unwrap_or(e)),
    };
    if let Some(sums) = &header.checksums {
        let computed = checksum::header_crc(&head[..header_end]);
        if computed != sums.header {
            return Err(Error::HeaderChecksum {
                stored: sums.header,
                computed,
            });
        }
    }
    let start = data_start(header_len, header.alignment)?;
    // Saturating: a sum past u64::MAX is "longer than any buffer", reported as truncation.
    let expected = start.saturating_add(header.data_nbytes);
    if expected != file_len {
        return Err(Error::FileLength {
            expected,
            actual: file_len,
        });
    }
    Ok(Head {
        header,
        header_len: header_end - PREFIX_LEN,
        // start <= expected == file_len; a caller's buffer of file_len bytes holds it.
        data_start: usize::try_from(start).map_err(|_| Error::FileLength {
            expected,
            actual: file_len,
        })?,
    })
}

/// The checksum error for a header that ends as a sealed one does but whose checksum does not
/// match, if it is one (`head`: prefix and header).
fn damaged_header(head: &[u8]) -> Option<Error> {
    if !checksum::looks_sealed(&head[PREFIX_LEN..]) {
        return None;
    }
    let b = &head[head.len() - 4..];
    let stored = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let computed = checksum::header_crc(head);
    (stored != computed).then_some(Error::HeaderChecksum { stored, computed })
}

impl Head<'_> {
    /// Checks that the header padding (file bytes `16 + H .. D`) of `file` is zero.
    pub fn check_padding(&self, file: &[u8]) -> Result<()> {
        Head::padding(file, PREFIX_LEN + self.header_len, self.data_start)
    }

    /// Checks that the header padding, file bytes `header_end..data_start`, of `head` (the file's
    /// first `data_start` bytes or more) is zero.
    pub fn padding(head: &[u8], header_end: usize, data_start: usize) -> Result<()> {
        zeros(head, header_end, data_start, "the padding after the header")
    }
}

/// Fails naming the first nonzero byte of `file[start..end]` (a range inside it).
fn zeros(file: &[u8], start: usize, end: usize, what: &'static str) -> Result<()> {
    let range = file.get(start..end).ok_or(Error::BufferLength {
        what: "the file buffer",
        expected: end as u64,
        actual: file.len() as u64,
    })?;
    match range.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(k) => Err(Error::NonzeroPadding {
            offset: (start + k) as u64,
            what,
        }),
    }
}

/// A validated eqx_msg file: its header and zero-copy access to every leaf's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    header: Header<'a>,
    header_len: usize,
    data_start: usize,
}

impl<'a> Reader<'a> {
    /// Checks the whole file: prefix, header (decoded and validated), and exact length.
    pub fn new(buf: &'a [u8]) -> Result<Reader<'a>> {
        let head = parse_head(buf, buf.len() as u64)?;
        head.check_padding(buf)?;
        Ok(Reader {
            buf,
            header: head.header,
            header_len: head.header_len,
            data_start: head.data_start,
        })
    }

    /// The decoded header.
    pub fn header(&self) -> &Header<'a> {
        &self.header
    }

    /// Takes the decoded header out of the reader.
    pub fn into_header(self) -> Header<'a> {
        self.header
    }

    /// The byte range of the msgpack header within the file (`16..16 + H`).
    pub fn header_range(&self) -> Range<usize> {
        PREFIX_LEN..PREFIX_LEN + self.header_len
    }

    /// Length of the msgpack header in bytes (`H`).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// File offset of the data section (`D`).
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The data section.
    pub fn data(&self) -> &'a [u8] {
        &self.buf[self.data_start..]
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The index and record of the leaf whose key path is `path`, if any (a linear scan).
    pub fn find(&self, path: &str) -> Option<(usize, &LeafSpec)> {
        LeafSpec::find(&self.header.leaves, path)
    }

    /// Checks every byte of the file against its checksums: each leaf's bytes against
    /// `leaf_crc32c` (summed by all cores), and every padding byte for zero. The prefix and header
    /// were checked when the reader was made.
    ///
    /// Fails with `LeafChecksums` naming every damaged leaf, `NonzeroPadding`, or `NoChecksums`
    /// for a file written without checksums.
    pub fn verify(&self) -> Result<()> {
        let sums = self.header.checksums.ok_or(Error::NoChecksums)?;
        let leaves = &self.header.leaves;
        let with_bytes: Vec<usize> = (0..leaves.len())
            .filter(|&i| leaves[i].byte_range().is_some())
            .collect();
        let buffers: Vec<&[u8]> = with_bytes
            .iter()
            .map(|&i| self.leaf_bytes(i).unwrap_or(&[]))
            .collect();
        let computed = checksum::crc32c_all(&buffers);
        check_sums(
            leaves,
            |i| sums.leaf(i),
            with_bytes.into_iter().zip(computed),
        )?;
        let base = self.data_start;
        for (start, end) in padding_gaps(leaves, self.header.data_nbytes) {
            // Inside the validated data section, so both fit in usize.
            zeros(
                self.buf,
                base + start as usize,
                base + end as usize,
                "the padding between leaves",
            )?;
        }
        Ok(())
    }

    /// The stored bytes of leaf `i`, or `None` for an abstract leaf or an index out of range.
    pub fn leaf_bytes(&self, i: usize) -> Option<&'a [u8]> {
        let (start, end) = self.header.leaves.get(i)?.byte_range()?;
        let data = self.data();
        data.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

/// Fails with `LeafChecksums` naming every leaf whose `computed` sum (pairs of record index and
/// CRC32C) differs from its `stored` one.
fn check_sums(
    leaves: &[LeafSpec],
    stored: impl Fn(usize) -> Option<u32>,
    computed: impl IntoIterator<Item = (usize, u32)>,
) -> Result<()> {
    let damaged: Vec<LeafRef> = computed
        .into_iter()
        .filter(|&(i, crc)| stored(i) != Some(crc))
        .map(|(i, _)| LeafRef::new(i, &leaves[i].path))
        .collect();
    if damaged.is_empty() {
        Ok(())
    } else {
        Err(Error::LeafChecksums { leaves: damaged })
    }
}

/// The byte ranges of a data section of `data_nbytes` bytes that no leaf covers (its padding),
/// in order; the leaves of a validated header do not overlap.
fn padding_gaps(leaves: &[LeafSpec], data_nbytes: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = leaves.iter().filter_map(|l| l.byte_range()).collect();
    ranges.sort_unstable();
    let mut gaps = Vec::new();
    let mut pos = 0u64;
    for (start, end) in ranges.into_iter().chain([(data_nbytes, data_nbytes)]) {
        if start > pos {
            gaps.push((pos, start));
        }
        pos = pos.max(end);
    }
    gaps
}

/// Checks a data section against its checksums from its bytes fed in order, piece by piece: what
/// [`Reader::verify`] checks, for a file read in chunks from a source that is not mapped.
#[derive(Debug, Clone)]
pub struct StreamVerifier {
    /// The data section cut into leaves (`Some(record index)`) and padding (`None`), in order.
    segments: Vec<(u64, u64, Option<usize>)>,
    /// Stored CRC32C per leaf record.
    stored: Vec<u32>,
    /// CRC32C so far per leaf record.
    computed: Vec<u32>,
    /// Index into `segments` and data-section offset of the next byte.
    next: usize,
    pos: u64,
    data_start: u64,
    /// Length of the data section (segments are sorted by start: the last need not end last).
    data_nbytes: u64,
    /// The first nonzero padding byte seen, reported after damaged leaves (as `Reader::verify`).
    padding: Option<Error>,
}

impl StreamVerifier {
    /// A verifier for the data section of a file with `header`, starting at file offset
    /// `data_start`; `NoChecksums` for a file written without checksums.
    pub fn new(header: &Header<'_>, data_start: u64) -> Result<StreamVerifier> {
        let sums = header.checksums.ok_or(Error::NoChecksums)?;
        let leaves = &header.leaves;
        let mut segments: Vec<(u64, u64, Option<usize>)> = leaves
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.byte_range().map(|(s, e)| (s, e, Some(i))))
            .chain(
                padding_gaps(leaves, header.data_nbytes)
                    .into_iter()
                    .map(|(s, e)| (s, e, None)),
            )
            .collect();
        segments.sort_unstable();
        Ok(StreamVerifier {
            segments,
            stored: (0..leaves.len())
                .map(|i| sums.leaf(i).unwrap_or(0))
                .collect(),
            computed: vec![0; leaves.len()],
            next: 0,
            pos: 0,
            data_start,
            data_nbytes: header.data_nbytes,
            padding: None,
        })
    }

    /// Bytes of the data section still to be fed.
    pub fn remaining(&self) -> u64 {
        self.data_nbytes - self.pos // (feed never takes more than the section holds)
    }

    /// Feeds the next bytes of the data section; fails only on more bytes than it has.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some(&(_, end, leaf)) = self.segments.get(self.next) else {
                return Err(Error::BufferLength {
                    what: "the data section",
                    expected: self.pos,
                    actual: self.pos + bytes.len() as u64,
                });
            };
            // pos lies in [start, end): take what is left of this segment.
            let take = (end - self.pos).min(bytes.len() as u64) as usize;
            let (piece, rest) = bytes.split_at(take);
            match leaf {
                Some(i) => self.computed[i] = checksum::append(self.computed[i], piece),
                None if self.padding.is_none() => {
                    if let Some(k) = piece.iter().position(|&b| b != 0) {
                        self.padding = Some(Error::NonzeroPadding {
                            offset: self.data_start + self.pos + k as u64,
                            what: "the padding between leaves",
                        });
                    }
                }
                None => {}
            }
            self.pos += take as u64;
            bytes = rest;
            // Skip finished segments (and empty leaves, whose sum is that of no bytes).
            while self
                .segments
                .get(self.next)
                .is_some_and(|s| s.1 <= self.pos)
            {
                self.next += 1;
            }
        }
        Ok(())
    }

    /// Checks the sums once every byte has been fed: `LeafChecksums` naming every damaged leaf of
    /// `leaves` (the header's records), else `NonzeroPadding` for the first nonzero padding byte.
    pub fn finish(self, leaves: &[LeafSpec]) -> Result<()> {
        let remaining = self.remaining();
        if remaining > 0 {
            return Err(Error::BufferLength {
                what: "the data section",
                expected: self.pos + remaining,
                actual: self.pos,
            });
        }
        let computed = &self.computed;
        let with_bytes = self.segments.iter().filter_map(|s| s.2);
        check_sums(
            leaves,
            |i| self.stored.get(i).copied(),
            with_bytes.map(|i| (i, computed[i])),
        )?;
        self.padding.map_or(Ok(()), Err)
    }
}

/// A read-only memory map of a file, from which a [`Reader`] borrows.
///
/// The map assumes nobody truncates or rewrites the file while it is open: as with every
/// memory map, doing so is undefined behaviour (truncation typically raises SIGBUS).
#[derive(Debug)]
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is read-only, and we only hand out `&[u8]` borrowing it. Its bytes could
        // still change if another process rewrote the file; the type's documentation states the
        // usual memory-map contract that the file is not modified while it is mapped.
        let map = unsafe { Mmap::map(&file)? };
        Ok(MappedFile { map: Some(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Validates the file and returns a reader borrowing the map.
    pub fn reader(&self) -> Result<Reader<'_>> {
        Reader::new(self.bytes())
    }
}
