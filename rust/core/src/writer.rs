//! Writing a whole file (or just its front matter) around an already-encoded header.
//!
//! The caller encodes the header (Python does, with `msgpack`); this module validates it, then
//! writes prefix, header, zero padding and every leaf at its offset, zeroing the gaps. Large data
//! sections are copied by several threads, each owning one contiguous slice of the output.

use std::mem::MaybeUninit;
use std::thread;

use crate::checksum;
use crate::error::{Error, LeafRef, Result};
use crate::frame::{data_start, encode_prefix, MAX_HEADER_LEN};
use crate::header::Header;

/// Data sections smaller than this are written by the calling thread alone.
const PARALLEL_MIN: usize = 4 << 20;
/// Each extra thread gets at least this many bytes.
const CHUNK_MIN: usize = 1 << 20;

/// A validated header and the file geometry it implies.
///
/// The header given is one without checksum fields; the frame writes it with them added
/// ([`checksum::with_slots`]) and fills them once the leaves' checksums are known.
#[derive(Debug)]
pub struct Frame<'h> {
    /// The header as written: the one given, plus the checksum entries.
    header_bytes: Vec<u8>,
    header: Header<'h>,
    data_start: u64,
    total_len: u64,
}

impl<'h> Frame<'h> {
    /// Decodes and validates `header_bytes` and computes where the data goes.
    pub fn new(header_bytes: &'h [u8]) -> Result<Frame<'h>> {
        if header_bytes.len() as u64 > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLong {
                header_len: header_bytes.len() as u64,
            });
        }
        let header = Header::decode_validated(header_bytes)?;
        if header.checksums.is_some() {
            return Err(Error::BadChecksumField {
                reason: "the header to write already has them: the writer adds them".into(),
            });
        }
        let header_bytes = checksum::with_slots(header_bytes, header.leaves.len())?;
        let header_len = header_bytes.len() as u64;
        if header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLong { header_len });
        }
        let data_start = data_start(header_len, header.alignment)?;
        let total_len =
            data_start
                .checked_add(header.data_nbytes)
                .ok_or_else(|| Error::SizeOverflow {
                    what: "the file length (data start + data_nbytes)".into(),
                })?;
        Ok(Frame {
            header_bytes,
            header,
            data_start,
            total_len,
        })
    }

    /// The decoded header.
    pub fn header(&self) -> &Header<'h> {
        &self.header
    }

    /// File offset of the data section (`D`).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Length of the whole file (`D + data_nbytes`).
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Prefix, sealed header and zero padding: the first `D` bytes of the file, given the CRC32C
    /// of every leaf's bytes in record order (0 for abstract leaves).
    pub fn front(&self, leaf_crcs: &[u32]) -> Result<Vec<u8>> {
        self.unsealed_front().sealed(leaf_crcs)
    }

    /// The front with its checksum slots still empty, to be sealed once the leaves are written
    /// (a streaming writer keeps it instead of the frame, which borrows the header bytes).
    pub fn unsealed_front(&self) -> Front {
        let mut bytes = Vec::with_capacity(self.data_start as usize);
        bytes.extend_from_slice(&encode_prefix(self.header_bytes.len() as u64));
        bytes.extend_from_slice(&self.header_bytes);
        let header_end = bytes.len();
        bytes.resize(self.data_start as usize, 0);
        Front {
            bytes,
            header_end,
            leaf_count: self.header.leaves.len(),
        }
    }

    /// Writes the whole file into `out` (`out.len()` must be [`Frame::total_len`]).
    ///
    /// `leaves[i]` holds the bytes of header leaf `i` (`None` exactly for abstract leaves).
    pub fn write_into(&self, leaves: &[Option<&[u8]>], out: &mut [u8]) -> Result<()> {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and `write` only ever
        // stores initialised bytes, so `out` stays fully initialised.
        let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.write(leaves, out, false)
    }

    /// Like [`Frame::write_into`], for an uninitialised buffer: every byte is written exactly once.
    ///
    /// Such a buffer is usually freshly allocated and not yet backed by memory, so on Linux a
    /// large one is first advised to use transparent huge pages: taking 2 MiB page faults
    /// instead of 4 KiB ones makes writing a fresh 1 GiB buffer several times faster.
    pub fn write_into_uninit(
        &self,
        leaves: &[Option<&[u8]>],
        out: &mut [MaybeUninit<u8>],
    ) -> Result<()> {
        self.write(leaves, out, true)
    }

    fn write(
        &self,
        leaves: &[Option<&[u8]>],
        out: &mut [MaybeUninit<u8>],
        fresh: bool,
    ) -> Result<()> {
        if out.len() as u64 != self.total_len {
            return Err(Error::BufferLength {
                what: "the output buffer",
                expected: self.total_len,
                actual: out.len() as u64,
            });
        }
        let segments = self.segments(leaves)?;
        // total_len == out.len(), so both offsets fit in usize.
        let (front, data) = out.split_at_mut(self.data_start as usize);
        if fresh && data.len() >= PARALLEL_MIN {
            advise_huge_pages(data);
        }
        let sums = write_data(&segments, data, true);
        let mut leaf_crcs = vec![0u32; leaves.len()];
        for (segment, crc) in segments.iter().zip(sums) {
            leaf_crcs[segment.leaf] = crc;
        }
        put(front, &self.front(&leaf_crcs)?);
        Ok(())
    }

    /// Checks the leaf buffers against the header; returns the non-empty ones sorted by offset.
    fn segments<'l>(&self, leaves: &[Option<&'l [u8]>]) -> Result<Vec<Segment<'l>>> {
        let specs = &self.header.leaves;
        if leaves.len() != specs.len() {
            return Err(Error::LeafCount {
                expected: specs.len(),
                actual: leaves.len(),
            });
        }
        let mut segments = Vec::with_capacity(leaves.len());
        for (i, (spec, buf)) in specs.iter().zip(leaves).enumerate() {
            let lr = || LeafRef::new(i, &spec.path);
            match (spec.byte_range(), buf) {
                (None, None) => {}
                (None, Some(_)) => {
                    return Err(Error::LeafData {
                        leaf: lr(),
                        reason: "an abstract leaf takes no buffer (pass None)",
                    })
                }
                (Some(_), None) => {
                    return Err(Error::LeafData {
                        leaf: lr(),
                        reason: "no buffer given for a leaf that stores bytes",
                    })
                }
                (Some((start, end)), Some(b)) => {
                    if b.len() as u64 != end - start {
                        return Err(Error::LeafLength {
                            leaf: lr(),
                            expected: end - start,
                            actual: b.len() as u64,
                        });
                    }
                    if !b.is_empty() {
                        // The range lies inside the data section, and the output buffer (whose
                        // length was checked first) holds it, so `start` fits in usize.
                        segments.push(Segment {
                            at: start as usize,
                            bytes: b,
                            leaf: i,
                        });
                    }
                }
            }
        }
        if !segments.is_sorted_by_key(|s| s.at) {
            segments.sort_unstable_by_key(|s| s.at);
        }
        Ok(segments)
    }
}

/// The first `D` bytes of a file (prefix, header with empty checksum slots, zero padding).
#[derive(Debug, Clone)]
pub struct Front {
    bytes: Vec<u8>,
    header_end: usize,
    leaf_count: usize,
}

impl Front {
    /// The front sealed with the CRC32C of every leaf's bytes in record order (0 for abstract
    /// leaves), one per leaf record.
    pub fn sealed(&self, leaf_crcs: &[u32]) -> Result<Vec<u8>> {
        if leaf_crcs.len() != self.leaf_count {
            return Err(Error::LeafCount {
                expected: self.leaf_count,
                actual: leaf_crcs.len(),
            });
        }
        let mut out = self.bytes.clone();
        checksum::seal(&mut out[..self.header_end], leaf_crcs)?;
        Ok(out)
    }
}

/// Bytes to be written at offset `at` of a range; `leaf` says whose they are.
#[derive(Debug, Clone, Copy)]
struct Segment<'l> {
    at: usize,
    bytes: &'l [u8],
    leaf: usize,
}

/// Copies `src` into the fresh, uninitialised `dst` (same length) with the writer's parallel copy.
///
/// For readers that need the bytes at another address (e.g. 64-byte aligned for XLA to alias).
pub fn parallel_copy(src: &[u8], dst: &mut [MaybeUninit<u8>]) -> Result<()> {
    if src.len() != dst.len() {
        return Err(Error::BufferLength {
            what: "the copy destination",
            expected: src.len() as u64,
            actual: dst.len() as u64,
        });
    }
    advise_huge_pages(dst);
    let whole = Segment {
        at: 0,
        bytes: src,
        leaf: 0,
    };
    write_data(&[whole], dst, false);
    Ok(())
}

/// Asks Linux to back `buf` with transparent huge pages (a hint; failures are ignored).
#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &mut [MaybeUninit<u8>]) {
    const PAGE: usize = 4096;
    let start = (buf.as_mut_ptr() as usize).next_multiple_of(PAGE);
    let end = (buf.as_mut_ptr() as usize + buf.len()) & !(PAGE - 1);
    if end > start {
        // SAFETY: [start, end) is a page-aligned range inside `buf`, which we borrow mutably;
        // MADV_HUGEPAGE changes only how the kernel backs the pages, never their contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buf: &mut [MaybeUninit<u8>]) {}

/// Fills the data section: leaf bytes where `segments` say, zeros everywhere else. With `sum`,
/// returns the CRC32C of each segment (in order), computed while copying it.
fn write_data(segments: &[Segment<'_>], data: &mut [MaybeUninit<u8>], sum: bool) -> Vec<u32> {
    let threads = if data.len() < PARALLEL_MIN {
        1
    } else {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        cores.min(data.len() / CHUNK_MIN).max(1)
    };
    let chunk = data.len().div_ceil(threads).max(1);
    let pieces: Vec<Vec<Piece>> = thread::scope(|s| {
        let mut chunks = data.chunks_mut(chunk).enumerate();
        let first = chunks.next();
        let handles: Vec<_> = chunks
            .map(|(k, dst)| s.spawn(move || fill(segments, k * chunk, dst, sum)))
            .collect();
        let mut all = vec![first.map_or_else(Vec::new, |(_, dst)| fill(segments, 0, dst, sum))];
        for h in handles {
            // A panic in a copy thread is a bug of this crate, never of the data: pass it on.
            all.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    let mut sums = vec![0u32; if sum { segments.len() } else { 0 }];
    // Chunks cover increasing ranges, so each segment's pieces come in order.
    for p in pieces.into_iter().flatten() {
        sums[p.segment] = if p.first {
            p.crc
        } else {
            checksum::combine(sums[p.segment], p.crc, p.len as u64)
        };
    }
    sums
}

/// The part of a segment one chunk copied, and its CRC32C.
struct Piece {
    segment: usize,
    first: bool,
    crc: u32,
    len: usize,
}

/// Writes the bytes of data-section range `[base, base + dst.len())` into `dst`; with `sum`,
/// returns the CRC32C of each piece of a segment it copied.
fn fill(
    segments: &[Segment<'_>],
    base: usize,
    dst: &mut [MaybeUninit<u8>],
    sum: bool,
) -> Vec<Piece> {
    let end = base + dst.len();
    let mut pieces = Vec::new();
    // First segment that ends after `base`.
    let mut next = segments.partition_point(|s| s.at + s.bytes.len() <= base);
    let mut pos = base;
    while pos < end {
        match segments.get(next) {
            Some(&Segment {
                at: o, bytes: b, ..
            }) if o < end => {
                if o > pos {
                    dst[pos - base..o - base].fill(MaybeUninit::new(0));
                    pos = o;
                }
                let stop = (o + b.len()).min(end);
                let (to, from) = (&mut dst[pos - base..stop - base], &b[pos - o..stop - o]);
                if sum {
                    let crc = copy_summing(to, from);
                    pieces.push(Piece {
                        segment: next,
                        first: pos == o,
                        crc,
                        len: stop - pos,
                    });
                } else {
                    copy(to, from);
                }
                pos = stop;
                next += 1;
            }
            _ => {
                dst[pos - base..].fill(MaybeUninit::new(0));
                pos = end;
            }
        }
    }
    pieces
}

/// Bytes summed, then copied, at a time: small enough that the copy reads them from the cache.
const SUM_STEP: usize = 128 << 10;

/// [`copy`], returning the CRC32C of `src`: each step is summed, then copied while still cached.
fn copy_summing(dst: &mut [MaybeUninit<u8>], src: &[u8]) -> u32 {
    if src.len() < SUM_STEP {
        put(dst, src);
        return checksum::crc32c(src);
    }
    let mut crc = 0;
    for (d, s) in dst.chunks_mut(SUM_STEP).zip(src.chunks(SUM_STEP)) {
        crc = checksum::append(crc, s);
        #[cfg(target_arch = "x86_64")]
        stream_copy(d, s);
        #[cfg(not(target_arch = "x86_64"))]
        put(d, s);
    }
    crc
}

/// Copies `src` into `dst` (same length).
///
/// Large copies use non-temporal stores on x86_64: the output is far bigger than the caches, and
/// glibc's `memcpy` picks a much slower loop for pieces of a few MiB to a few hundred MiB (typical
/// leaf sizes) than for one huge copy; this loop runs at full speed whatever the piece size.
fn copy(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= STREAM_MIN {
        stream_copy(dst, src);
        return;
    }
    put(dst, src);
}

/// `dst.write_copy_of_slice(src)` for Rust versions before 1.93 (compiles to `memcpy`).
fn put(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(*s);
    }
}

/// Copies of at least this many bytes use non-temporal stores.
#[cfg(target_arch = "x86_64")]
const STREAM_MIN: usize = 1 << 20;

#[cfg(target_arch = "x86_64")]
fn stream_copy(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    assert_eq!(dst.len(), src.len());
    // Bytes before the first 64-byte-aligned destination address, then whole 64-byte blocks.
    let head = dst.as_ptr().align_offset(64).min(src.len());
    let blocks = (src.len() - head) / 64;
    let (dst_head, rest) = dst.split_at_mut(head);
    let (dst_body, dst_tail) = rest.split_at_mut(blocks * 64);
    let (src_head, rest) = src.split_at(head);
    let (src_body, src_tail) = rest.split_at(blocks * 64);
    put(dst_head, src_head);
    let d = dst_body.as_mut_ptr().cast::<__m128i>();
    let s = src_body.as_ptr().cast::<__m128i>();
    for k in 0..blocks * 4 {
        // SAFETY: SSE2 is part of the x86_64 baseline. `k < blocks * 4`, so both pointers stay
        // within the `blocks * 64`-byte bodies; loads are unaligned, and the stores are 16-byte
        // aligned because `dst_body` starts 64-byte aligned. `dst` is a `&mut` borrow, so it
        // cannot overlap `src`.
        unsafe { _mm_stream_si128(d.add(k), _mm_loadu_si128(s.add(k))) };
    }
    // SAFETY: SSE2 is part of the x86_64 baseline. The fence orders the non-temporal stores
    // before anything this thread does next (including signalling that it finished).
    unsafe { _mm_sfence() };
    put(dst_tail, src_tail);
}

/// Writes the data-section bytes `[base, base + out.len())` into `out`: each `(offset, bytes)`
/// segment at `offset - base`, zeros between and around them. Returns each segment's CRC32C.
///
/// For writers that stream the data section in pieces (many small leaves gathered into one write).
/// Segments must be sorted by offset, must not overlap, and must lie inside the range.
pub fn write_range(segments: &[(u64, &[u8])], base: u64, out: &mut [u8]) -> Result<Vec<u32>> {
    let end = base
        .checked_add(out.len() as u64)
        .ok_or_else(|| Error::SizeOverflow {
            what: "the range written".into(),
        })?;
    let mut local = Vec::with_capacity(segments.len());
    let mut previous_end = base;
    for (index, &(offset, bytes)) in segments.iter().enumerate() {
        let stop = offset.checked_add(bytes.len() as u64);
        let Some(stop) = stop.filter(|&stop| offset >= previous_end && stop <= end) else {
            return Err(Error::BadSegment {
                index,
                range: (offset, offset.saturating_add(bytes.len() as u64)),
                within: (base, end),
            });
        };
        previous_end = stop;
        if !bytes.is_empty() {
            // Inside [base, end), whose length is out.len(): the difference fits in usize.
            local.push(Segment {
                at: (offset - base) as usize,
                bytes,
                leaf: index,
            });
        }
    }
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and `write_data` only ever
    // stores initialised bytes, so `out` stays fully initialised.
    let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let sums = write_data(&local, out, true);
    let mut crcs = vec![0u32; segments.len()];
    for (segment, crc) in local.iter().zip(sums) {
        crcs[segment.leaf] = crc;
    }
    Ok(crcs)
}

/// `D + data_nbytes` for an encoded header (validating it).
pub fn total_len(header_bytes: &[u8]) -> Result<u64> {
    Ok(Frame::new(header_bytes)?.total_len())
}

/// Writes the whole file into `out`, which must be exactly [`total_len`] bytes.
pub fn assemble_into(header_bytes: &[u8], leaves: &[Option<&[u8]>], out: &mut [u8]) -> Result<()> {
    Frame::new(header_bytes)?.write_into(leaves, out)
}

/// The whole file as a new vector.
pub fn assemble(header_bytes: &[u8], leaves: &[Option<&[u8]>]) -> Result<Vec<u8>> {
    let frame = Frame::new(header_bytes)?;
    let len = usize::try_from(frame.total_len()).map_err(|_| Error::SizeOverflow {
        what: "the file length on this platform".into(),
    })?;
    frame.segments(leaves)?; // wrong leaves are an error, not a huge allocation first
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| Error::AllocFailed { bytes: len as u64 })?;
    frame.write_into_uninit(leaves, &mut out.spare_capacity_mut()[..len])?;
    // SAFETY: `write_into_uninit` returned Ok, so it initialised all `len` bytes.
    unsafe { out.set_len(len) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_copy_copies_and_checks_lengths() {
        let src: Vec<u8> = (0..(9 << 20)).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![MaybeUninit::new(0u8); src.len()];
        parallel_copy(&src, &mut dst).unwrap();
        assert!(dst
            .iter()
            .zip(&src)
            .all(|(d, s)| unsafe { d.assume_init() } == *s));
        let mut short = vec![MaybeUninit::new(0u8); 3];
        assert_eq!(
            parallel_copy(&src, &mut short).unwrap_err().kind(),
            "LayoutError"
        );
    }

    #[test]
    fn copy_handles_every_alignment() {
        let src: Vec<u8> = (0..(3 << 20) + 77).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = vec![MaybeUninit::new(0u8); src.len() + 64];
        for shift in [0, 1, 15, 16, 33, 63] {
            let n = src.len() - shift;
            copy(&mut dst[shift..shift + n], &src[shift..]);
            // SAFETY: test buffer, initialised from the start.
            let got: Vec<u8> = dst[shift..shift + n]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            assert!(got == src[shift..], "shift {shift}");
        }
    }

    /// The fill logic against a simple reference, for many chunkings.
    #[test]
    fn fill_matches_reference() {
        let a = [1u8; 100];
        let b = vec![2u8; 7];
        let c = vec![3u8; 64];
        let segments: Vec<Segment> = [(0, &a[..]), (128, &b), (192, &c)]
            .into_iter()
            .enumerate()
            .map(|(leaf, (at, bytes))| Segment { at, bytes, leaf })
            .collect();
        let n = 300;
        let mut want = vec![0u8; n];
        for s in &segments {
            want[s.at..s.at + s.bytes.len()].copy_from_slice(s.bytes);
        }
        for chunk in [1, 2, 3, 7, 64, 100, 101, 128, 299, 300] {
            let mut out = vec![MaybeUninit::new(0xEEu8); n];
            let mut sums = [0u32; 3];
            for (k, dst) in out.chunks_mut(chunk).enumerate() {
                for p in fill(&segments, k * chunk, dst, true) {
                    let s = &mut sums[p.segment];
                    *s = if p.first {
                        p.crc
                    } else {
                        checksum::combine(*s, p.crc, p.len as u64)
                    };
                }
            }
            let whole: Vec<u32> = segments.iter().map(|s| checksum::crc32c(s.bytes)).collect();
            assert_eq!(sums[..], whole[..], "chunk {chunk}");
            // SAFETY: test buffer, initialised from the start.
            let got: Vec<u8> = out.iter().map(|x| unsafe { x.assume_init() }).collect();
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn write_range_places_segments_and_zeros_the_rest() {
        let (a, b) = (vec![7u8; 5], vec![9u8; 3]);
        let mut out = vec![0xEEu8; 16];
        let crcs = write_range(&[(130, &a), (140, &b), (143, &[])], 128, &mut out).unwrap();
        let crc = checksum::crc32c;
        assert_eq!(crcs, vec![crc(&a), crc(&b), 0]);
        let mut want = vec![0u8; 16];
        want[2..7].fill(7);
        want[12..15].fill(9);
        assert_eq!(out, want);
    }

    #[test]
    fn write_range_refuses_bad_segments() {
        let a = vec![1u8; 8];
        let mut out = vec![0u8; 16];
        let cases: [&[(u64, &[u8])]; 4] = [
            &[(8, &a), (0, &a)], // out of order
            &[(0, &a), (4, &a)], // overlapping
            &[(12, &a)],         // past the end
            &[(u64::MAX, &a)],   // overflowing
        ];
        for segments in cases {
            let err = write_range(segments, 0, &mut out).unwrap_err();
            assert_eq!(err.kind(), "LayoutError");
            assert!(err.to_string().contains("data segment"), "{err}");
        }
        let err = write_range(&[(0, &a)], 4, &mut out).unwrap_err(); // before the range
        assert!(err.to_string().contains("[4, 20)"), "{err}");
        // A segment whose end overflows u64 is refused even when the range ends at u64::MAX.
        let mut tail = vec![0u8; 16];
        let err = write_range(&[(u64::MAX - 4, &a)], u64::MAX - 16, &mut tail).unwrap_err();
        assert_eq!(err.kind(), "LayoutError", "{err}");
    }
}
