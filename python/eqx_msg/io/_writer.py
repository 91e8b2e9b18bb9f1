"""`save`: a pytree streamed into a file leaf by leaf, by positional writes (several threads, in
Rust) or into any binary file object, checksums computed as the bytes go."""

from __future__ import annotations

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
import io
import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

import jax
import numpy as np

from .. import _core, _leaves, _plan
from .._errors import (
    LayoutError,
)
from .._record import Kind, LeafRecord
from . import _atomic

PathLike = str | os.PathLike[str]

_ZEROS = memoryview(bytes(1 << 20))


_SMALL_LEAF = 64 << 10  # leaves up to this size are written in blocks of up to _BLOCK bytes

_BLOCK = 4 << 20


def save(
    target: PathLike | BinaryIO,
    tree: Any,
    *,
    metadata: Any = None,
    alignment: int = 64,
    unstorable: str = "error",
) -> None:
    """Write a pytree to a file, streaming leaf by leaf; atomic when `target` is a path.

    **Arguments:**
    - `target`: a path (`str` or path-like), or a writable binary file object.
    - `tree`, `metadata`, `alignment`, `unstorable`: as for `eqx_msg.dumps`.

    A path is written to a temporary file in the same directory, fsynced and renamed over the target,
    then the directory is fsynced: a crash never leaves a half-written file at `target`, and on any
    error the previous file is untouched and nothing is left behind. The temporary file has no name
    until it is complete where Linux's O_TMPFILE allows, so a writer killed mid-save leaves nothing;
    elsewhere it is named for its host and process, and the next `save` into the directory removes
    those whose process is gone. A symlink of yours stays a
    symlink (its target is replaced); one owned by another user is not followed. Peak extra memory
    is about one leaf (device arrays come to the host one at a time; row-sharded arrays one shard at
    a time).

    A file object is written from its position and left at the end of what was written (it is
    not fsynced or closed). A regular file that ends at its position (as one just opened with
    `"wb"` does) is written by the same positional writes as a path; any other plain file or an
    `io.BytesIO` by its own writes, the front last; any other file object (a wrapper such as
    `gzip.GzipFile`, a socket, a file opened for appending) gets every byte once, in order.
    """
    if isinstance(target, bytes | bytearray | memoryview):
        raise TypeError(
            "save(target, ...) takes a str path, a path-like or a writable binary file object; "
            "bytes are a file's contents to eqx_msg.open and load, so a bytes path is not taken "
            "(pass os.fsdecode(path))"
        )
    planned = _plan.plan(tree, metadata, alignment, unstorable)
    if isinstance(target, str | os.PathLike):
        _atomic.replace(os.fsdecode(target), lambda f: _write_file(f, planned))
    else:
        _write(target, planned)


def _write_file(f: BinaryIO, planned: _plan.Plan) -> None:
    """Write a planned file into the new file `f` (positional writes where the binding has them)."""
    if _POSITIONAL:
        _write_positional(f.fileno(), 0, planned)
    else:  # pragma: no cover - Windows: no positional writes in the binding
        _write(f, planned)
        f.flush()


_POSITIONAL = hasattr(_core, "write_leaf")


def _write_positional(fd: int, base: int, planned: _plan.Plan) -> None:
    """Write the file into the file `fd` from byte `base`, where the file ends: every leaf at its
    offset (Rust's positional writer, several threads, summing as it writes), then the front,
    sealed with the leaves' checksums. Padding is never written: the file is given its length
    first, so gaps read as zeros."""
    frame = _core.FileFrame(planned.header)
    os.ftruncate(fd, base + frame.total_len)
    crcs = _write_leaves(_PositionalSink(fd, base + frame.data_start), planned)
    _core.write_leaf(fd, base, np.frombuffer(frame.front(crcs), np.uint8))


def _write(f: BinaryIO, planned: _plan.Plan) -> None:
    """Write the file to the file object `f` at its position.

    Into a regular file that ends at that position (a file just opened with "wb"), by positional
    writes, as for a path (the file object is flushed first, and left at the end of what was
    written). A plain file or `io.BytesIO` otherwise gets a placeholder front, every leaf with zero
    padding, then the sealed front over the placeholder. Any other file object (a wrapper such as
    `gzip.GzipFile`, a socket, a file opened for appending) gets every byte once, in order: the
    leaves are summed first (read twice, device arrays copied to the host twice)."""
    fd = _positional_fd(f)
    if fd is not None:
        start = f.tell()
        _write_positional(fd, start, planned)
        f.seek(start + _core.FileFrame(planned.header).total_len)
        return
    frame = _core.FileFrame(planned.header)
    if type(f) in _SEEKS_BACK and _seekable(f) and not _appends(f):  # (appending: at the end)
        start = f.tell()
        _write_all(f, bytes(frame.data_start))
        crcs = _write_leaves(_StreamSink(f), planned)
        end = f.tell()
        f.seek(start)
        _write_all(f, frame.front(crcs))
        f.seek(end)
        return
    crcs = _write_leaves(_SumSink(), planned)
    _write_all(f, frame.front(crcs))
    _write_leaves(_StreamSink(f), planned)


_PLAIN_FILES = (io.FileIO, io.BufferedWriter, io.BufferedRandom)
# File objects whose front may be written last, over a placeholder: any other (a wrapper that
# compresses, hashes or uploads what passes through its write) gets every byte once, in order.
_SEEKS_BACK = (*_PLAIN_FILES, io.BytesIO)


def _positional_fd(f: BinaryIO) -> int | None:
    """The descriptor of `f`, flushed, if positional writes at its position are the same as writing
    to it: a plain file object (`open(path, "wb")` and the like, no wrapper of its own) of a
    seekable regular file, open for writing without O_APPEND, that ends at or before its
    position (so no byte past it is overwritten or left between the leaves). Else None."""
    if not _POSITIONAL or type(f) not in _PLAIN_FILES or not _seekable(f) or _appends(f):
        return None  # (a wrapper, gzip say, must see every byte through its own write)
    try:
        fd = f.fileno()
        f.flush()
        info = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        position = f.tell()
    except (AttributeError, OSError, ValueError):  # (io.UnsupportedOperation is an OSError)
        return None
    writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    if not (stat.S_ISREG(info.st_mode) and writable):
        return None
    return fd if info.st_size <= position else None


def _appends(f: BinaryIO) -> bool:
    """Whether every write to `f` goes to its end (opened with "a"), wherever it was sought to."""
    if "a" in str(getattr(f, "mode", "")):
        return True
    try:
        return bool(fcntl is not None and fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_APPEND)
    except (AttributeError, OSError, ValueError):
        return False


def _seekable(f: BinaryIO) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _write_leaves(sink: _Sink, planned: _plan.Plan) -> list[int]:
    """Hand every leaf's bytes to `sink`; returns each leaf's CRC32C (0 for abstract leaves).

    Small leaves are gathered into one block per few MiB (10,000 tiny leaves: a handful of writes,
    not 20,000); large ones go to the sink straight from their host arrays, a shard at a time.
    """
    crcs = [0] * len(planned.records)
    block = _Block()
    for index, (record, source) in enumerate(zip(planned.records, planned.sources)):
        if record["kind"] == Kind.ABSTRACT:
            continue
        if record["nbytes"] <= _SMALL_LEAF:
            if not block.add(index, record, source):
                block.flush(sink, crcs)
                block.add(index, record, source)
            continue
        block.flush(sink, crcs)
        crc = written = 0
        for chunk in _host_chunks(record, source):
            part = sink.leaf(record["offset"] + written, chunk)
            crc = _core.crc32c_combine(crc, part, chunk.nbytes)
            written += chunk.nbytes
        if written != record["nbytes"]:  # pragma: no cover - guards a logic error, never a file
            raise LayoutError(
                f"{record['path']}: wrote {written} bytes, expected {record['nbytes']}"
            )
        crcs[index] = crc
    block.flush(sink, crcs)
    sink.end(planned.data_nbytes)
    return crcs


class _Sink:
    """Where `_write_leaves` puts bytes: offsets are relative to the data section."""

    def leaf(self, offset: int, data: np.ndarray) -> int:
        """Put `data` at `offset`; return its CRC32C."""
        raise NotImplementedError

    def gathered(
        self, base: int, length: int, offsets: list[int], arrays: list[np.ndarray]
    ) -> list[int]:
        """Put the range `[base, base + length)`: each array at its offset, zeros between; return
        each array's CRC32C."""
        raise NotImplementedError

    def end(self, data_nbytes: int) -> None:
        """Everything is put: the data section ends at `data_nbytes`."""


class _PositionalSink(_Sink):
    """Positional writes into a file descriptor, by Rust (GIL released)."""

    def __init__(self, fd: int, data_start: int):
        self.fd, self.data_start = fd, data_start

    def leaf(self, offset: int, data: np.ndarray) -> int:
        return _core.write_leaf(self.fd, self.data_start + offset, data)

    def gathered(
        self, base: int, length: int, offsets: list[int], arrays: list[np.ndarray]
    ) -> list[int]:
        return _core.write_gathered(self.fd, self.data_start + base, base, length, offsets, arrays)


class _StreamSink(_Sink):
    """Sequential writes to a file object, with zero padding between."""

    def __init__(self, f: BinaryIO):
        self.f, self.position = f, 0

    def leaf(self, offset: int, data: np.ndarray) -> int:
        _pad(self.f, offset - self.position)
        crc = _core.crc32c(data)
        _write_all(self.f, data)
        self.position = offset + data.nbytes
        return crc

    def gathered(
        self, base: int, length: int, offsets: list[int], arrays: list[np.ndarray]
    ) -> list[int]:
        _pad(self.f, base - self.position)
        block, crcs = _core.write_range(base, length, offsets, arrays)
        _write_all(self.f, block)
        self.position = base + length
        return crcs

    def end(self, data_nbytes: int) -> None:
        _pad(self.f, data_nbytes - self.position)


class _SumSink(_Sink):
    """Sums without writing (a first pass for streams that cannot seek back to the front)."""

    def leaf(self, offset: int, data: np.ndarray) -> int:
        return _core.crc32c(data)

    def gathered(
        self, base: int, length: int, offsets: list[int], arrays: list[np.ndarray]
    ) -> list[int]:
        return [_core.crc32c(a) for a in arrays]


class _Block:
    """Consecutive small leaves, gathered (in Rust) into one buffer to be written at once."""

    def __init__(self) -> None:
        self.start = 0  # data-section offset of the first leaf
        self.indices: list[int] = []  # the leaves' record indices
        self.offsets: list[int] = []
        self.arrays: list[np.ndarray] = []  # the leaves' stored bytes
        self.end = 0

    def add(self, index: int, record: LeafRecord, source: Any) -> bool:
        """Take one leaf; False (taking nothing) if the block would grow past its size."""
        end = record["offset"] + record["nbytes"]
        if not self.arrays:
            self.start = record["offset"]
        elif end - self.start > _BLOCK:
            return False
        self.indices.append(index)
        self.offsets.append(record["offset"])
        self.arrays.append(_leaves.host_array(record, source))
        self.end = end
        return True

    def flush(self, sink: _Sink, crcs: list[int]) -> None:
        """Hand the block to `sink`, recording its leaves' checksums in `crcs`."""
        if not self.arrays:
            return
        sums = sink.gathered(self.start, self.end - self.start, self.offsets, self.arrays)
        for index, crc in zip(self.indices, sums):
            crcs[index] = crc
        self.indices.clear()
        self.offsets.clear()
        self.arrays.clear()


def _host_chunks(record: LeafRecord, source: Any) -> Iterator[np.ndarray]:
    """A leaf's stored bytes in order: shard by shard for row-sharded jax arrays, else whole."""
    shards = _row_shards(source) if record["kind"] == Kind.JAX else None
    if shards is None:
        yield _flat_bytes(_leaves.host_array(record, source))
        return
    for shard in shards:
        yield _flat_bytes(_leaves.host_array(record, shard.data))


def _row_shards(array: Any) -> list[Any] | None:
    """The distinct shards of a sharded jax.Array in row order, if they tile it by leading rows."""
    if not isinstance(array, jax.Array) or len(array.sharding.device_set) < 2 or array.ndim == 0:
        return None
    if not array.is_fully_addressable:
        return None
    rows: dict[int, Any] = {}
    for shard in array.addressable_shards:
        index = shard.index
        if any(
            s != slice(None) and (s.start, s.stop) != (0, n)
            for s, n in zip(index[1:], array.shape[1:])
        ):
            return None  # a column shard is not a contiguous block of the file
        start = index[0].start or 0
        rows.setdefault(start, shard)
    ordered = [rows[k] for k in sorted(rows)]
    end = 0
    for shard in ordered:
        start = shard.index[0].start or 0
        stop = shard.index[0].stop if shard.index[0].stop is not None else array.shape[0]
        if start != end:
            return None
        end = stop
    return ordered if end == array.shape[0] else None


def _flat_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


def _write_all(f: BinaryIO, data: bytes | memoryview | np.ndarray) -> None:
    view = (data.data if isinstance(data, np.ndarray) else memoryview(data)).cast("B")
    while view.nbytes:
        n = f.write(view)
        if n is None:  # a non-blocking raw file: nothing written this time
            continue
        view = view[n:]


def _pad(f: BinaryIO, count: int) -> None:
    while count > 0:
        step = min(count, len(_ZEROS))
        _write_all(f, _ZEROS[:step])
        count -= step
