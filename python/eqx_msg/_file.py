"""Files: atomic streaming `save`, memory-mapped `load`, and lazy per-leaf access through `Reader`."""

from __future__ import annotations

import builtins
import contextlib
import mmap
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import jax
import numpy as np

from . import _codec, _core, _leaves, _options, _place, _registry, _sources, _tree
from ._errors import ClosedError, KeyPathError, LayoutError, LengthError
from ._header import Header
from ._options import Load, LoadOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

PathLike = str | os.PathLike[str]
_ZEROS = memoryview(bytes(1 << 20))
_WRITE_BUFFER = 1 << 20
_SMALL_LEAF = 64 << 10  # leaves up to this size are written in blocks of up to _BLOCK bytes
_BLOCK = 4 << 20


def save(
    target: PathLike | BinaryIO, tree: Any, *, metadata: Any = None, alignment: int = 64
) -> None:
    """Write a pytree to a file, streaming leaf by leaf; atomic when `target` is a path.

    **Arguments:**
    - `target`: a path, or a writable binary file object.
    - `tree`, `metadata`, `alignment`: as for `eqx_msg.dumps`.

    A path is written to a temporary file in the same directory, fsynced and renamed over the target,
    then the directory is fsynced: a crash never leaves a half-written file at `target`, and on any
    error the previous file is untouched and nothing is left behind. The temporary file has no name
    until it is complete where Linux's O_TMPFILE allows, so a writer killed mid-save leaves nothing;
    elsewhere it is named for its host and process, and the next `save` into the directory removes
    those whose process is gone. A symlink of yours stays a
    symlink (its target is replaced); one owned by another user is not followed. Peak extra memory
    is about one leaf (device arrays come to the host one at a time; row-sharded arrays one shard at
    a time).
    """
    planned = _codec.plan(tree, metadata, alignment)
    if not isinstance(target, str | bytes | os.PathLike):
        _write(target, planned)
        return
    path = _own_target(os.path.abspath(os.fsdecode(target)))
    directory, name = os.path.split(path)
    fd, tmp = _temporary(directory, name)
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as f:
            if _POSITIONAL:
                _write_positional(f.fileno(), planned)
            else:  # pragma: no cover - Windows: no positional writes in the binding
                _write(f, planned)
                f.flush()
            os.fsync(f.fileno())
            if tmp is None:  # an unnamed file: named only now, complete, for the rename
                tmp = _name_unnamed(f.fileno(), directory, name)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    _remove_dead_temporaries(directory)


# Temporary files of `save`: `.{target}.{host}~{pid}.{random}.eqx-msg-tmp`, so that a writer killed
# mid-save (SIGKILL, power loss) can be told from a live one, and its file removed by a later save.
_TEMP_SUFFIX = ".eqx-msg-tmp"
_TEMP_NAME = re.compile(
    r"^\..*\.(?P<host>[A-Za-z0-9-]+)~(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.eqx-msg-tmp$"
)
_USE_O_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _writer_tag() -> str:
    """`host~pid` of this process, as temporary names hold it (the pid read now: after a fork too)."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname()) or 'host'}~{os.getpid()}"


def _temporary(directory: str, name: str) -> tuple[int, str | None]:
    """A file to write the new contents into: `(fd, None)` for an unnamed one (Linux's O_TMPFILE,
    where the filesystem has it: a writer killed while writing leaves nothing), else `(fd, path)` of
    a named temporary tagged with this host and process."""
    if _USE_O_TMPFILE:
        try:
            return os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600), None
        except OSError:  # a filesystem without O_TMPFILE (EOPNOTSUPP, EISDIR, ...)
            pass
    prefix = f".{name}.{_writer_tag()}."
    return tempfile.mkstemp(prefix=prefix, suffix=_TEMP_SUFFIX, dir=directory)


def _name_unnamed(fd: int, directory: str, name: str) -> str:
    """Give the unnamed file `fd` a tagged temporary name in `directory` (to rename it from).

    linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N, which Python's `os.link` calls only when
    given a directory fd (plain link(2) would link the /proc symlink itself).
    """
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        for _ in range(100):
            tmp = f".{name}.{_writer_tag()}.{os.urandom(6).hex()}{_TEMP_SUFFIX}"
            try:
                os.link(f"/proc/self/fd/{fd}", tmp, src_dir_fd=directory_fd,
                        dst_dir_fd=directory_fd, follow_symlinks=True)  # fmt: skip
                return os.path.join(directory, tmp)
            except FileExistsError:
                continue
    finally:
        os.close(directory_fd)
    raise FileExistsError(f"no free temporary name in {directory}")  # pragma: no cover


def _remove_dead_temporaries(directory: str) -> None:
    """Remove the temporaries of `save`s in `directory` whose writer is gone: tagged with this host,
    owned by this user, and naming a process that no longer exists. Never a live writer's (a process
    of that id exists, ours or not), another host's, another user's, or one named otherwise."""
    host, _ = _writer_tag().split("~")
    getuid = getattr(os, "getuid", None)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        found = _TEMP_NAME.match(entry.name) if entry.name.endswith(_TEMP_SUFFIX) else None
        if found is None or found["host"] != host:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or (getuid is not None and info.st_uid != getuid()):
                continue
            if _alive(int(found["pid"])):
                continue
            os.unlink(entry.path)
        except OSError:  # gone already (another save cleaning up), or not ours to remove
            continue


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can ask about: leave its file
    return True


_POSITIONAL = hasattr(_core, "write_leaf")


def _write_positional(fd: int, planned: _codec.Plan) -> None:
    """Write the file into the empty file `fd`: every leaf at its offset (Rust's positional writer,
    several threads, summing as it writes), then the front, sealed with the leaves' checksums.
    Padding is never written: the file is given its length first, so gaps read as zeros."""
    frame = _core.FileFrame(planned.header)
    os.ftruncate(fd, frame.total_len)
    crcs = _write_leaves(_PositionalSink(fd, frame.data_start), planned)
    _core.write_leaf(fd, 0, np.frombuffer(frame.front(crcs), np.uint8))


def _write(f: BinaryIO, planned: _codec.Plan) -> None:
    """Stream the file to the file object `f`: a placeholder front, every leaf with zero padding,
    then the sealed front over the placeholder. A stream that cannot seek back is summed first
    (each leaf is read twice, device arrays copied to the host twice) and then written in order."""
    frame = _core.FileFrame(planned.header)
    if _seekable(f):
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


def _seekable(f: BinaryIO) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _write_leaves(sink: _Sink, planned: _codec.Plan) -> list[int]:
    """Hand every leaf's bytes to `sink`; returns each leaf's CRC32C (0 for abstract leaves).

    Small leaves are gathered into one block per few MiB (10,000 tiny leaves: a handful of writes,
    not 20,000); large ones go to the sink straight from their host arrays, a shard at a time.
    """
    crcs = [0] * len(planned.records)
    block = _Block()
    for index, (record, source) in enumerate(zip(planned.records, planned.sources)):
        if record["kind"] == "abstract":
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

    def add(self, index: int, record: dict[str, Any], source: Any) -> bool:
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


def _host_chunks(record: dict[str, Any], source: Any) -> Iterator[np.ndarray]:
    """A leaf's stored bytes in order: shard by shard for row-sharded jax arrays, else whole."""
    shards = _row_shards(source) if record["kind"] == "jax" else None
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


def _own_target(path: str) -> str:
    """The file `save` replaces: a symlink's target when the link is ours, else the path itself.

    A link someone else planted (say in a shared /tmp) is not followed, as the kernel's
    protected_symlinks would refuse for open(): the link itself is replaced, or the rename fails.
    """
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return path
    getuid = getattr(os, "getuid", None)  # (POSIX only: elsewhere a link is never followed)
    if stat.S_ISLNK(link.st_mode) and getuid is not None and link.st_uid == getuid():
        return os.path.realpath(path)
    return path


def _mode_for(path: str) -> int:
    """Keep an existing file's permissions; new files get 0o666 less the umask, like open()."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@_options.documented
def load(source: PathLike | Any, **options: Unpack[LoadOptions]) -> Any:
    """Load a pytree from a file by memory-mapping it: nothing is read until it is used.

    **Arguments:**
    - `source`: the file: a path (memory-mapped), or anything `eqx_msg.open` takes (bytes, a
      binary file object, an object with `read_into`), read by range.
    {options}

    **Returns:** the pytree. numpy leaves are read-only views into the map, which stays open while any
    array uses it. Replace the file only with `save` (a rename) while they are in use: writing into
    it in place (`cp`, truncation) changes them, or ends the process with SIGBUS.
    """
    load = Load.of(options, "load")
    with open(source) as reader:
        return _codec.rebuild(reader._file, load)


def verify(source: Any) -> None:
    """Check a file, or the bytes of one, against its checksums: every leaf, the header, padding.

    **Arguments:**
    - `source`: anything `eqx_msg.open` takes: a path, bytes-like data, a binary file object, or an
      object with `read_into` (read in chunks of 16 MiB).

    **Raises:** `ChecksumError` naming every damaged leaf by key path (`error.paths`), or saying
    that the prefix or header is damaged (`error.header`), that padding is not zero, or that the
    file has no checksums; any other `FormatError` for a file that is not valid at all.
    """
    with open(source) as reader:
        reader.verify()


def open(source: PathLike | Any) -> Reader:  # noqa: A001 - mirrors builtins.open on purpose
    """Open a file for lazy access: `with eqx_msg.open(p) as r: r["['encoder'].weight"]`.

    **Arguments:**
    - `source`: a path (memory-mapped); bytes-like data (bytes, bytearray, memoryview, mmap, numpy
      array; used in place); a binary file object with `seek` and `readinto`; or any object with
      `read_into(offset, buffer) -> int` and `size` (see `Reader`).

    **Returns:** a `Reader`. Only the prefix and header are read to open it (at most two reads
    from a file object or `read_into` source); leaves are read when asked for.
    """
    return Reader(source)


class Reader:
    """An eqx_msg file opened for lazy access: header, key paths, single leaves, slices, subtrees.

    A path is memory-mapped and bytes are used in place. A binary file object (`seek`, `readinto`)
    or an object with `read_into(offset, buffer) -> int` (fill the writable memoryview `buffer`
    from byte `offset`, return the count) and `size` (bytes, an int or a method) is read by range:
    opening reads the prefix and header only, and each of `reader[key]`, `get`, `slice(key)[rows]`
    and `load(filter=...)` reads just the byte ranges it needs, into new 64-byte-aligned buffers
    (leaves close together in one read). Such a source stays the caller's to close.
    """

    def __init__(self, source: PathLike | Any):
        """Open `source` and validate the file's prefix and header (every leaf's byte range
        included); no leaf data is read."""
        self._map: mmap.mmap | None = None
        self.path: str | None = None
        # Validated in Rust, which keeps the decoded records: fetching one leaf or building the
        # abstract tree never pays for decoding every record in Python.
        with _codec.gc_paused():
            if isinstance(source, str | os.PathLike):
                self.path = self.name = os.fspath(source)
                self._map = _map(self.path)
                self._file = _codec.File(_codec.as_bytes_array(self._map))
            elif (ranged := _sources.as_source(source)) is not None:
                self.name = ranged.name
                self._file = _codec.RangedFile(ranged)
            else:
                buf = _codec.as_bytes_array(source)
                self.name = f"<{type(source).__name__} of {len(buf)} bytes>"
                self._file = _codec.File(buf)
        self._closed = False

    @property
    def header(self) -> Header:
        """The validated header model."""
        return self._file.validated

    @property
    def metadata(self) -> Any:
        """The user metadata stored with `save(..., metadata=)`."""
        return self._file.raw.get("metadata")

    def keys(self) -> list[str]:
        """The key paths of the array leaves, in file order."""
        return self._file.header.paths()

    def specs(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Key path -> `jax.ShapeDtypeStruct` of every array leaf, in file order; no data is read."""
        with _codec.gc_paused():
            return dict(zip(self.keys(), _leaves.abstract_leaves(self._file.table)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __getitem__(self, key: str) -> np.ndarray:
        """A leaf's data as a read-only numpy view into the map (key data for PRNG keys)."""
        if not isinstance(key, str):
            raise KeyPathError(f"{key!r}: leaves are looked up by key path strings such as '.w'")
        record = self._record(key)
        if record["kind"] == "abstract":
            raise KeyPathError(f"{key}: an abstract leaf (ShapeDtypeStruct) has no data")
        (view,) = self._arrays([record["index"]])
        if view is None:  # pragma: no cover - only abstract leaves have none, refused above
            raise KeyPathError(f"{key}: no data")
        return view

    def get(self, key: str, device: Any = None, sharding: Any = None) -> Any:
        """One leaf as its saved kind (a jax.Array for jax leaves), placed on `device`/`sharding`."""
        record = self._record(key)
        index = record["index"]
        if sharding == "saved":  # Rust's record lacks the sharding entry
            record = self._file.records[index]
        shardings = _place.resolve_shardings(
            sharding, [record], lambda _: _leaves.abstract_leaf(record)
        )
        table = _leaves.table_of([record])
        return _leaves.build_leaves(table, self._arrays([index]), device, shardings)[0]

    def verify(self) -> None:
        """Check every byte of the file against its checksums, using all cores.

        **Raises:** `ChecksumError` naming every damaged leaf by key path (its `paths`), the first
        nonzero padding byte, or that the file has no checksums (written before eqx_msg 0.2.0).
        A damaged prefix or header is refused already when the file is opened.
        """
        self._check_open()
        self._file.verify()

    def slice(self, key: str) -> _Slice:
        """`reader.slice(key)[idx]` reads only the rows (first axis) asked for: a numpy copy."""
        record = self._record(key)
        if record["kind"] == "abstract":
            raise KeyPathError(f"{key}: an abstract leaf (ShapeDtypeStruct) has no data")
        self._check_open()
        index = record["index"]
        dtype = self._file.dtypes[self._file.table.which[index]]
        return _Slice(
            tuple(record["shape"]), dtype, lambda start, stop: self._rows(index, start, stop)
        )

    def abstract(self, allow: Any = ()) -> Any:
        """The saved pytree with `jax.ShapeDtypeStruct` leaves; no array data is read."""
        # From the records Rust decoded at open: no Python decode of the whole header.
        with _codec.gc_paused():
            leaves = _leaves.abstract_leaves(self._file.table)
            tree = _codec.decode_tree(self._file.header.tree())
            return _tree.unflatten(tree, leaves, _registry.allow_map(allow))

    @_options.documented
    def load(self, **options: Unpack[LoadOptions]) -> Any:
        """The whole pytree, or the part `filter` selects.

        **Arguments:**
        {options}
        """
        load = Load.of(options, "Reader.load")
        self._check_open()
        return _codec.rebuild(self._file, load)

    def close(self) -> None:
        """Drop the reader's references to the map; arrays still using it keep it alive.

        The header (`.header`, `.metadata`, `.keys()`, `.abstract()`) stays readable; data does not.
        """
        if self._closed:
            return
        self._closed = True
        if isinstance(self._file, _codec.RangedFile):
            self._file.close()
        else:  # keep the prefix and header (not the data)
            self._file.buf = np.array(self._file.buf[: self._file.data_start])
        if self._map is not None:
            with contextlib.suppress(BufferError):  # arrays still view the map: unmapped last
                self._map.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<eqx_msg.Reader {self.name!r}: {len(self)} array leaves, {state}>"

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.name}: the reader is closed; reopen it with eqx_msg.open")

    def _rows(self, index: int, start: int, stop: int) -> np.ndarray:
        self._check_open()
        return self._file.rows(index, start, stop)

    def _arrays(self, indices: list[int]) -> list[np.ndarray | None]:
        self._check_open()
        return self._file.arrays(indices)

    def _subtree_paths(self, wanted: Iterable[str]) -> tuple[set[str], list[str]]:
        """Which `wanted` key paths are nodes of the tree, and the nodes on the way whose children
        are not named (see `_tree.subtree_paths`)."""
        return _tree.subtree_paths(_codec.decode_tree(self._file.header.tree()), wanted)

    def _find(self, key: str) -> dict[str, Any] | None:
        """The record at key path `key` (without its sharding entry: `get` decodes for "saved")."""
        return self._file.header.find(key)

    def _record(self, key: str) -> dict[str, Any]:
        record = self._find(key)
        if record is None and key in self._subtree_paths([key])[0]:
            raise KeyPathError(
                f"{key!r} in {self.name} is not an array leaf but a container or a value stored in "
                "the header (a number, string, function, None): reader.abstract() shows it, and "
                "reader.load(filter=...) loads it"
            )
        if record is None:
            close = [k for k in self.keys() if key in k or k in key][:5]
            raise KeyPathError(
                f"{key!r} is not a key path in {self.name}"
                + (f"; did you mean {close}?" if close else "")
            )
        return record


def _map(path: str) -> mmap.mmap:
    """A read-only map of the file at `path` (LengthError if too short to be one)."""
    with _builtin_open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _core.PREFIX_LEN:
            raise LengthError(f"{path}: {size} bytes is too short for an eqx_msg file")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class _Slice:
    """Row access to one leaf: indexing reads only the rows its first index selects.

    `rows(start, stop)` gives rows `start:stop` of the leaf's data (a view of a map, or the bytes
    of those rows read from a source).
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, rows: Callable[[int, int], Any]):
        self.shape = shape
        self.dtype = dtype
        self._rows = rows

    def __getitem__(self, index: Any) -> np.ndarray:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, ())
        window = None
        whole = index == () if isinstance(index, tuple) else False
        if not whole and self.shape and 0 not in self.shape:  # (no bytes: read whole, nothing)
            window = _row_window(first, self.shape[0])
        if window is None:
            return np.array(self._rows(0, self.shape[0] if self.shape else 0)[index])
        start, stop, shifted = window
        return np.array(self._rows(start, stop)[(shifted, *rest)])


def _row_window(first: Any, n: int) -> tuple[int, int, Any] | None:
    """For a first-axis index `first` into `n` rows: the rows `start:stop` it touches and the
    index into just those rows; None where all rows are read (`...`, `None`, a bool mask of more
    than one axis)."""
    if first is Ellipsis or first is None:
        return None
    if isinstance(first, slice):
        start, stop, step = first.indices(n)
        touched = range(start, stop, step)
        if not touched:
            return 0, 0, slice(0, 0)
        low, high = min(touched[0], touched[-1]), max(touched[0], touched[-1]) + 1
        end = touched[-1] - low + (1 if step > 0 else -1)
        return low, high, slice(touched[0] - low, end if end >= 0 else None, step)
    if isinstance(first, int | np.integer) and not isinstance(first, bool | np.bool_):
        i = int(first) + (n if first < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {int(first)} is out of bounds for axis 0 with size {n}")
        return i, i + 1, 0
    chosen = np.asarray(first)
    if chosen.dtype == bool and chosen.ndim != 1:
        return None
    if chosen.size == 0 and chosen.dtype != bool:  # `[]`: numpy takes it as no integers
        chosen = chosen.astype(np.intp)
    rows = np.arange(n)[chosen]  # (IndexError for what numpy would refuse)
    if not rows.size:
        return 0, 0, rows
    low = int(rows.min())
    return low, int(rows.max()) + 1, rows - low


_builtin_open = builtins.open
