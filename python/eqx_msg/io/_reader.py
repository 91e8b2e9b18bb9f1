"""Reading files: `load`, `verify`, and `open`'s lazy `Reader` (header, key paths, single leaves,
row slices, subtrees) over a map, bytes, or a source read by range."""

from __future__ import annotations

import builtins
import contextlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import numpy as np
import pydantic

from .. import _core, _file, _gc, _leaves, _options, _place, _rebuild, _registry, _tree
from .._errors import (
    ClosedError,
    KeyPathError,
    LengthError,
    MagicError,
)
from .._header import Header
from .._options import Load, LoadOptions
from .._record import Kind, LeafRecord
from . import _sources

if TYPE_CHECKING:
    from typing_extensions import Unpack


PathLike = str | os.PathLike[str]


@_options.documented
def load(source: PathLike | Any, **options: Unpack[LoadOptions]) -> Any:
    """Load a pytree from a file: a path is memory-mapped, so nothing is read until it is used.

    **Arguments:**
    - `source`: the file: a path (memory-mapped), or anything `eqx_msg.open` takes (bytes, a
      binary file object, an object with `read_into`), read by range.
    {options}

    **Returns:** the pytree. From a path, numpy leaves are read-only views into the map, which stays
    open while any array uses it (from other sources, arrays in aligned buffers of their own).
    Replace the file only with `save` (a rename) while they are in use: writing into it in place
    (`cp`, truncation) changes them, or ends the process with SIGBUS.
    """
    load = Load.of(options, "load")
    with open(source) as reader:
        return _rebuild.rebuild(reader._file, load)


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


_M = TypeVar("_M", bound=pydantic.BaseModel)


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
        with _gc.paused():
            if isinstance(source, str | os.PathLike):
                self.path = self.name = os.fspath(source)
                self._map = _map(self.path)
                self._file = _file.File(_file.as_bytes_array(self._map))
            elif (ranged := _sources.as_source(source)) is not None:
                self.name = ranged.name
                self._file = _sources.RangedFile(ranged)
            else:
                buf = _file.as_bytes_array(source)
                self.name = f"<{type(source).__name__} of {len(buf)} bytes>"
                try:
                    self._file = _file.File(buf)
                except (MagicError, LengthError) as err:
                    raise type(err)(f"{err}{_path_hint(source)}") from None
        self._closed = False

    @property
    def header(self) -> Header:
        """The validated header model."""
        return self._file.validated

    @property
    def metadata(self) -> Any:
        """The user metadata stored with `save(..., metadata=)`."""
        return self._file.metadata

    def metadata_as(self, model: type[_M]) -> _M:
        """The metadata validated as the pydantic model `model` (its own validators run).

        **Arguments:**
        - `model`: a `pydantic.BaseModel` subclass (such as the one given to `save(..., metadata=)`).

        **Returns:** `model.model_validate(metadata)`; a `pydantic.ValidationError` if it does not fit.
        """
        return model.model_validate(self.metadata)

    def keys(self) -> list[str]:
        """The key paths of the array leaves, in file order."""
        return self._file.header.paths()

    def specs(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Key path -> `jax.ShapeDtypeStruct` of every array leaf, in file order; no data is read."""
        with _gc.paused():
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
        if record["kind"] == Kind.ABSTRACT:
            raise KeyPathError(f"{key}: an abstract leaf (ShapeDtypeStruct) has no data")
        (view,) = self._arrays([record["index"]])
        if view is None:  # pragma: no cover - only abstract leaves have none, refused above
            raise KeyPathError(f"{key}: no data")
        return view

    def get(self, key: str, device: Any = None, sharding: Any = None) -> Any:
        """One leaf as its saved kind (a jax.Array for jax leaves), placed on `device`/`sharding`."""
        record = self._record(key)
        index = record["index"]
        shardings = _place.resolve_shardings(
            sharding, [record], lambda _: _leaves.abstract_leaf(record)
        )
        table = _leaves.table_of([record])
        return _leaves.build_leaves(table, self._arrays([index]), device, shardings)[0]

    def verify(self) -> None:
        """Check every byte of the file against its checksums (in memory: using all cores; from a
        source read by range: streamed in chunks of 16 MiB).

        **Raises:** `ChecksumError` naming every damaged leaf by key path (its `paths`), the first
        nonzero padding byte, or that the file has no checksums (written before eqx_msg 0.2.0).
        A damaged prefix or header is refused already when the file is opened.
        """
        self._check_open()
        self._file.verify()

    def slice(self, key: str) -> _Slice:
        """`reader.slice(key)[idx]` reads only the rows (first axis) asked for: a numpy copy."""
        record = self._record(key)
        if record["kind"] == Kind.ABSTRACT:
            raise KeyPathError(f"{key}: an abstract leaf (ShapeDtypeStruct) has no data")
        self._check_open()
        index = record["index"]
        dtype = self._file.dtypes[self._file.table.which[index]]
        return _Slice(
            tuple(record["shape"]),
            dtype,
            lambda start, stop: self._rows(index, start, stop),
            lambda: self._arrays([index])[0],
        )

    def abstract(self, allow: Any = ()) -> Any:
        """The saved pytree with `jax.ShapeDtypeStruct` leaves; no array data is read."""
        # From the records Rust decoded at open: no Python decode of the whole header.
        with _gc.paused():
            leaves = _leaves.abstract_leaves(self._file.table)
            tree = _file.decode_tree(self._file.header.tree())
            return _tree.unflatten(tree, leaves, _registry.allow_map(allow))

    @_options.documented
    def load(self, **options: Unpack[LoadOptions]) -> Any:
        """The whole pytree, or the part `filter` selects.

        **Arguments:**
        {options}
        """
        load = Load.of(options, "Reader.load")
        self._check_open()
        return _rebuild.rebuild(self._file, load)

    def close(self) -> None:
        """Drop the reader's references to the map; arrays still using it keep it alive.

        The header (`.header`, `.metadata`, `.keys()`, `.abstract()`) stays readable; data does not.
        """
        if self._closed:
            return
        self._closed = True
        self._file.close()
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
        return _tree.subtree_paths(_file.decode_tree(self._file.header.tree()), wanted)

    def _find(self, key: str) -> LeafRecord | None:
        """The record at key path `key` (without its sharding entry: `get` decodes for "saved")."""
        return self._file.header.find(key)

    def _record(self, key: str) -> LeafRecord:
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


def _path_hint(data: Any) -> str:
    """A hint for bytes that are not a file but name one: bytes are contents, never a path."""
    if isinstance(data, bytes) and 0 < len(data) < 4096 and b"\0" not in data:
        with contextlib.suppress(OSError, ValueError):
            if os.path.isfile(os.fsdecode(data)):
                return (
                    f" (these bytes name a file: pass the path as a str, os.fsdecode({data!r:.60}))"
                )
    return ""


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
    of those rows read from a source), `whole()` all of it (a 0-d leaf has no rows).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        rows: Callable[[int, int], Any],
        whole: Callable[[], Any],
    ):
        self.shape = shape
        self.dtype = dtype
        self._rows = rows
        self._whole = whole

    def __getitem__(self, index: Any) -> np.ndarray:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, ())
        window = None
        whole = index == () if isinstance(index, tuple) else False
        if not whole and self.shape and 0 not in self.shape:  # (no bytes: read whole, nothing)
            window = _row_window(first, self.shape[0])
        if window is None:
            return np.array(self._whole()[index])
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
