"""Sources that are not mapped: a file object, or anything with `read_into(offset, buffer)`.

Opening one reads the prefix and header only (at most two reads); leaves are read on demand, each
byte range once, into 64-byte-aligned buffers, adjacent small leaves coalesced into one read. This
is what object storage builds on: one ranged request per read.
"""

from __future__ import annotations

import io
import math
import operator
import os
import stat
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import _core, _leaves
from .._errors import ClosedError, LengthError
from .._file import File

# The first read of a source: the prefix and, for most files, the whole header and its padding.
_FIRST_READ = 64 << 10
# Header padding read along with a header longer than the first read: enough for alignments up
# to 4 KiB (larger ones, rare, take a third read).
_PADDING_GUESS = 4 << 10
# Leaves closer than this are read together, the bytes between them included (padding, or small
# leaves that were not asked for), while the read stays under _GROUP bytes.
_GAP = 64 << 10
_GROUP = 16 << 20
# Chunks of a data section streamed through the checksum verifier.
_VERIFY_CHUNK = 16 << 20


@runtime_checkable
class RangeSource(Protocol):
    """What `eqx_msg.open` reads a file from when it is not a path or bytes: any object with
    `read_into(offset, buffer)` (fill `buffer`, a writable memoryview, with the source's bytes from
    `offset`; return how many were written, an int: fewer only at the source's end) and `size` (the
    length in bytes: an int, or a method). Its methods may be called from several threads.
    """

    def read_into(self, offset: int, buffer: memoryview) -> int: ...


class FileObjectSource:
    """A binary file object with `seek` and `readinto` (an open file, `io.BytesIO`, ...), read by
    range: with `os.preadv` on its file descriptor where it has one (the file's position is left
    alone, and threads may share it), else by `seek` + `readinto` under a lock. The object stays
    the caller's: it is not closed with the reader."""

    def __init__(self, f: Any):
        self._f = f
        self.name = str(getattr(f, "name", f"<{type(f).__name__}>"))
        self.size = _size(f.seek(0, os.SEEK_END), f)
        self._lock = threading.Lock()
        self._fd: int | None = None
        if hasattr(os, "preadv"):
            try:
                fd = f.fileno()
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    self._fd = fd
            except (OSError, AttributeError, ValueError):  # BytesIO: io.UnsupportedOperation
                pass

    def read_into(self, offset: int, buffer: memoryview) -> int:
        filled = 0
        if self._fd is not None:
            while filled < len(buffer):
                n = os.preadv(self._fd, [buffer[filled:]], offset + filled)
                if n == 0:
                    break
                filled += n
            return filled
        with self._lock:
            self._f.seek(offset)
            while filled < len(buffer):
                n = _count(
                    self._f.readinto(buffer[filled:]), len(buffer) - filled, self, "readinto"
                )
                if n == 0:
                    break
                filled += n
        return filled


class ObjectSource:
    """An object of the `RangeSource` protocol, with its size looked up once."""

    def __init__(self, source: Any):
        size = getattr(source, "size", None)
        if callable(size):
            size = size()
        if size is None and hasattr(source, "__len__"):
            size = len(source)
        self._source = source
        self.name = str(getattr(source, "name", f"<{type(source).__name__}>"))
        self.size = _size(size, source)

    def read_into(self, offset: int, buffer: memoryview) -> int:
        n = self._source.read_into(offset, buffer)
        return _count(n, len(buffer), self, "read_into")


def _size(size: Any, source: Any) -> int:
    """A source's size, checked: a non-negative integer (`TypeError` otherwise), below 2**63
    (`LengthError`: no file is that long)."""
    try:
        if isinstance(size, bool):
            raise TypeError
        size = operator.index(size)
    except TypeError:
        raise TypeError(
            f"{type(source).__name__} has read_into but no size: give it a `size` (the length "
            f"in bytes, an int or a method), not {size!r:.40}, so that eqx_msg can check the "
            "file's length"
        ) from None
    if size < 0:
        raise TypeError(f"{type(source).__name__}: a size of {size} bytes is negative")
    if size >= 1 << 63:
        raise LengthError(f"{type(source).__name__}: a size of {size} bytes is no file's")
    return size


def _count(n: Any, asked: int, source: Any, method: str) -> int:
    """The byte count a source's `method` returned, checked: an int from 0 to `asked` (None, as a
    non-blocking file object says "nothing yet", counts as 0)."""
    if n is None:
        return 0
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"{source.name}: {method} returned {n!r:.40}, not a count of bytes")
    n = int(n)
    if not 0 <= n <= asked:
        raise LengthError(f"{source.name}: {method} returned {n} for a buffer of {asked} bytes")
    return n


Source = FileObjectSource | ObjectSource


def as_source(obj: Any) -> Source | None:
    """The ranged source `obj` is (a file object, or an object with `read_into`), else None."""
    if hasattr(obj, "read_into"):
        return ObjectSource(obj)
    if isinstance(obj, io.TextIOBase):
        raise TypeError("eqx_msg reads binary files: open the file with mode 'rb'")
    if hasattr(obj, "readinto") and hasattr(obj, "seek"):
        return FileObjectSource(obj)
    return None


def aligned_empty(nbytes: int) -> np.ndarray:
    """A new uint8 array of `nbytes` bytes whose data is 64-byte aligned."""
    align = _core.MIN_ALIGNMENT
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes]


def read_exact(source: Source, offset: int, buffer: np.ndarray) -> None:
    """Fill `buffer` with `source`'s bytes from `offset`; `LengthError` if the source ends first."""
    if not len(buffer):
        return
    got = source.read_into(offset, memoryview(buffer.data).cast("B"))
    if got != len(buffer):
        raise LengthError(
            f"{source.name}: reading {len(buffer)} bytes at offset {offset} gave {got}: the "
            f"source ended before its size ({source.size} bytes) says it does"
        )


def read_head(source: Source) -> tuple[_core.FileHeader, np.ndarray]:
    """Read and check a source's prefix, header and header padding, in at most two reads (three
    for an alignment over 4 KiB); returns the checked header and the bytes read."""
    if source.size < _core.PREFIX_LEN:
        raise LengthError(f"{source.name}: {source.size} bytes is too short for an eqx_msg file")
    first = aligned_empty(min(source.size, _FIRST_READ))
    read_exact(source, 0, first)
    header_len = _core.header_len(bytes(first[: _core.PREFIX_LEN]))  # (magic, version checked)
    if _core.PREFIX_LEN + header_len > source.size:  # refused now, not after reading it all
        _core.FileHeader.from_head(first, source.size)  # (the core's verdict: it raises)
    head = _grow(source, first, min(source.size, _core.PREFIX_LEN + header_len + _PADDING_GUESS))
    header = _core.FileHeader.from_head(head, source.size)
    head = _grow(source, head, header.data_start)  # (a large alignment's padding)
    header.check_padding(head)
    head.flags.writeable = False
    return header, head


def _grow(source: Source, head: np.ndarray, length: int) -> np.ndarray:
    """The source's first `length` bytes, given its first `len(head)` in `head`: `head` itself if
    it holds them, else a new aligned buffer with the rest read in one read."""
    if length <= len(head):
        return head
    longer = aligned_empty(length)
    longer[: len(head)] = head
    read_exact(source, len(head), longer[len(head) :])
    return longer


def read_arrays(
    source: Source,
    header: _core.FileHeader,
    head: np.ndarray,
    dtypes: list[np.dtype],
    indices: Sequence[int],
) -> list[np.ndarray | None]:
    """The data of leaves `indices` (None for abstract ones), read by range: read-only arrays in
    new aligned buffers. Leaves are read in offset order, those close together in one read (the
    bytes between them included while the gap is at most `_GAP` and the read `_GROUP` bytes).
    Leaves that the first read of the file already holds (`head`, from `read_head`) are not read
    again: a small file is read once in all."""
    out: list[np.ndarray | None] = [None] * len(indices)
    wanted = sorted(
        (r[0], r[1], k, i) for k, (i, r) in enumerate(zip(indices, header.ranges(indices))) if r
    )
    groups: list[tuple[int, int, list[tuple[int, int, int, int]]]] = []  # (start, end, leaves)
    for leaf in wanted:
        if groups:
            start, end, group = groups[-1]
            if leaf[0] - end <= _GAP and max(end, leaf[1]) - start <= _GROUP:
                group.append(leaf)  # (an empty leaf may lie inside another's range: max)
                groups[-1] = (start, max(end, leaf[1]), group)
                continue
        groups.append((leaf[0], leaf[1], [leaf]))
    for start, end, group in groups:
        if header.data_start + end <= len(head):
            buffer = head[header.data_start + start : header.data_start + end]
        else:
            buffer = read_bytes(source, header, start, end)
            buffer.flags.writeable = False
        arrays = header.arrays(buffer, dtypes, [i for _, _, _, i in group], start)
        for (_, _, k, _), array in zip(group, arrays):
            out[k] = array
    return out


def read_bytes(source: Source, header: _core.FileHeader, start: int, stop: int) -> np.ndarray:
    """Bytes `start..stop` of the data section, in a new aligned buffer."""
    buffer = aligned_empty(stop - start)
    read_exact(source, header.data_start + start, buffer)
    return buffer


def verify(source: Source, header: _core.FileHeader) -> None:
    """Check a source's data section against its checksums, streamed in chunks of 16 MiB."""
    verifier = header.verifier()
    position = header.data_start
    chunk = aligned_empty(min(_VERIFY_CHUNK, verifier.remaining))
    while verifier.remaining:
        piece = chunk[: min(len(chunk), verifier.remaining)]
        read_exact(source, position, piece)
        verifier.feed(piece)
        position += len(piece)
    verifier.finish()


class RangedFile(File):
    """A validated eqx_msg file read by range from a source that is not mapped (a file object, an
    object store): opening it reads the prefix and header only; leaf data is read when asked for.
    """

    def __init__(self, source: Source):
        """Read and validate the prefix and header of `source` (at most two reads)."""
        self.source: Source | None = source
        header, self.head = read_head(source)  # (the head may hold leaves too)
        self._start(header)

    def arrays(self, indices: Sequence[int] | None = None) -> list[np.ndarray | None]:
        """Leaf data (every leaf, or those at `indices`; None for abstract ones) in new read-only
        64-byte-aligned buffers, reading only those leaves' byte ranges.

        Packed sub-byte dtypes are unpacked into new arrays.
        """
        _leaves.refuse_unreadable(self.table, self.dtypes, indices, self.header.paths)
        wanted = range(len(self.table.which)) if indices is None else indices
        return read_arrays(self._source(), self.header, self.head, self.dtypes, list(wanted))

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` (first axis) of leaf `index`'s data, reading only their bytes (all of
        the leaf for packed sub-byte dtypes, whose rows may share a byte)."""
        t = self.table.which[index]
        name, shape, _, _ = self.table.types[t]
        offset = self.table.offsets[index]
        if _core.dtype_bits(name) < 8 or offset is None:
            return super().rows(index, start, stop)
        _leaves.refuse_unreadable(self.table, self.dtypes, [index], self.header.paths)
        dtype = self.dtypes[t]
        row = dtype.itemsize * math.prod(shape[1:])
        buffer = read_bytes(self._source(), self.header, offset + start * row, offset + stop * row)
        rows = buffer.view(dtype).reshape((stop - start, *shape[1:]))
        rows.flags.writeable = False
        return rows

    def verify(self) -> None:
        """Check every byte against the file's checksums, streaming the data section through
        Rust's verifier in chunks; `ChecksumError` if not."""
        verify(self._source(), self.header)

    def close(self) -> None:
        """Forget the source (the caller's to close)."""
        self.source = None

    def _source(self) -> Source:
        if self.source is None:
            raise ClosedError("the reader is closed; reopen it with eqx_msg.open")
        return self.source
