//! Zero-copy reading of a whole eqx_msg file held in memory or memory-mapped.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};
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
    let header = Header::decode_validated(&head[PREFIX_LEN..header_end])?;
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

    /// The stored bytes of leaf `i`, or `None` for an abstract leaf or an index out of range.
    pub fn leaf_bytes(&self, i: usize) -> Option<&'a [u8]> {
        let (start, end) = self.header.leaves.get(i)?.byte_range()?;
        let data = self.data();
        data.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
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
