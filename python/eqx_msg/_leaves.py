"""Array leaves: the bytes a leaf stores when writing, and the leaf object rebuilt when reading."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from . import _core, _dtypes, _place
from ._errors import HeaderError, LayoutError

# Dtypes a jax.Array holds only with jax_enable_x64 on (JAX narrows them otherwise).
_X64_ONLY = frozenset({"int64", "uint64", "float64", "complex128"})


def host_array(record: dict[str, Any], source: Any) -> np.ndarray | None:
    """The bytes to store for one leaf: C-contiguous, little-endian, sub-byte types packed.

    Device arrays come to the host here (one leaf at a time). Returns None for abstract leaves.
    """
    kind = record["kind"]
    if kind == "abstract":
        return None
    array = np.asarray(jax.random.key_data(source) if kind == "key" else source)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    array = np.ascontiguousarray(array)
    bits = _dtypes.PACKED_BITS.get(record["dtype"])
    if bits is not None:
        packed = _core.pack_subbyte(array.reshape(-1).view(np.uint8), bits)
        return np.frombuffer(packed, np.uint8)
    return array


class Table(NamedTuple):
    """Per-leaf columns of a validated header: all that rebuilding the leaves needs.

    `types` are the distinct `(dtype, shape, weak_type, key_impl)` of the leaves and `which[i]` is
    leaf `i`'s index among them, as `_core.FileHeader.leaf_table()` gives them.
    """

    kinds: Sequence[str]
    offsets: Sequence[int | None]
    types: Sequence[tuple[str, Sequence[int], bool, str | None]]
    which: Sequence[int]


def table_of(records: Sequence[dict[str, Any]]) -> Table:
    """The `Table` of decoded leaf records."""
    types: dict[tuple[str, tuple[int, ...], bool, str | None], int] = {}
    which = [types.setdefault(_type_key(r), len(types)) for r in records]
    return Table(
        [r["kind"] for r in records], [r.get("offset") for r in records], list(types), which
    )


class _Type(NamedTuple):
    """What reading a leaf of one `(dtype, shape, weak_type, key_impl)` needs, computed once."""

    dtype: np.dtype
    shape: tuple[int, ...]
    count: int
    nbytes: int
    bits: int | None  # 4 or 2 for types packed on disk
    weak_type: bool
    key_impl: str | None
    abstract: jax.ShapeDtypeStruct
    x64_only: bool


@functools.lru_cache(maxsize=4096)
def _type(name: str, shape: tuple[int, ...], weak_type: bool, key_impl: str | None) -> _Type:
    return _Type(
        _dtypes.to_numpy(name),
        shape,
        math.prod(shape),
        _core.storage_nbytes(name, shape),
        _dtypes.PACKED_BITS.get(name),
        weak_type,
        key_impl,
        _abstract(shape, name, weak_type, key_impl),  # an unknown key impl: HeaderError, up front
        name in _X64_ONLY,
    )


def _types(table: Table) -> list[_Type]:
    return [_type(name, tuple(shape), weak, impl) for name, shape, weak, impl in table.types]


def _view(buf: np.ndarray, t: _Type, start: int) -> np.ndarray:
    """A leaf's data at `start`: a read-only view into `buf` (a copy for packed dtypes)."""
    if t.bits is not None:
        unpacked = _core.unpack_subbyte(buf[start : start + t.nbytes], t.bits, t.count)
        return np.frombuffer(unpacked, t.dtype).reshape(t.shape)
    # The cheapest N-d view numpy has (~0.4 us; at 10k leaves it matters). Rust checked the range.
    return np.ndarray(t.shape, t.dtype, buf, start)


def _type_key(record: dict[str, Any]) -> tuple[str, tuple[int, ...], bool, str | None]:
    """A record's `(dtype, shape, weak_type, key_impl)`."""
    return (
        record["dtype"],
        tuple(record["shape"]),
        bool(record.get("weak_type")),
        record.get("key_impl"),
    )


def _type_of(record: dict[str, Any]) -> _Type:
    return _type(*_type_key(record))


def host_view(buf: np.ndarray, record: dict[str, Any], data_start: int) -> np.ndarray:
    """A leaf's data as a numpy array: a read-only view into `buf` (a copy for packed dtypes)."""
    return _view(buf, _type_of(record), data_start + record["offset"])


def build_leaves(
    table: Table,
    buf: np.ndarray,
    data_start: int,
    device: Any = None,
    shardings: Sequence[Any] | None = None,
    selected: Sequence[bool] | None = None,
    paths: Callable[[], Sequence[str]] | None = None,
) -> list[Any]:
    """Rebuild every leaf object of a header's `table` from the file bytes in `buf`.

    numpy leaves are read-only views of `buf`; jax and key leaves are placed on devices in one
    batch (`device` / `shardings`: see `_place.put`); abstract leaves, and leaves not `selected`,
    become `jax.ShapeDtypeStruct` without their bytes being read. `paths()` names leaves in warnings.
    """
    types = _types(table)
    leaves: list[Any] = [None] * len(table.kinds)
    to_place: list[int] = []
    hosts: list[np.ndarray] = []
    numpy_instead: list[int] = []
    x64 = jax.config.jax_enable_x64
    for i, (kind, offset, w) in enumerate(zip(table.kinds, table.offsets, table.which)):
        t = types[w]
        if kind == "abstract" or (selected is not None and not selected[i]):
            leaves[i] = t.abstract
            continue
        view = _view(buf, t, data_start + offset)
        if (kind == "jax" and (x64 or not t.x64_only)) or kind == "key":
            to_place.append(i)
            hosts.append(view)
        elif kind == "jax":  # 64-bit data stays exact: numpy, never a silently narrowed jax array
            leaves[i] = view
            numpy_instead.append(i)
        elif kind == "numpy":
            leaves[i] = view
        elif kind == "numpy_scalar":
            leaves[i] = view[()]
        else:
            raise LayoutError(f"leaf {i}: unknown kind {kind!r}")
    if numpy_instead:
        names = paths() if paths is not None else None
        shown = [names[i] if names is not None else f"leaf {i}" for i in numpy_instead[:3]]
        warnings.warn(
            f"{len(numpy_instead)} 64-bit jax leaves ({', '.join(shown)}...) load as numpy arrays "
            "because jax_enable_x64 is off; enable it to get jax arrays",
            stacklevel=3,
        )
    placed = _place.put(
        hosts,
        [types[table.which[i]].weak_type for i in to_place],
        device,
        None if shardings is None else [shardings[i] for i in to_place],
    )
    for i, array in zip(to_place, placed):
        impl = types[table.which[i]].key_impl
        leaves[i] = array if table.kinds[i] != "key" else jax.random.wrap_key_data(array, impl=impl)
    return leaves


def abstract_leaf(record: dict[str, Any]) -> jax.ShapeDtypeStruct:
    """The `jax.ShapeDtypeStruct` a record describes (typed PRNG keys included)."""
    return _type_of(record).abstract


def abstract_leaves(table: Table) -> list[jax.ShapeDtypeStruct]:
    """Every leaf's `jax.ShapeDtypeStruct`, from a header's table."""
    distinct = [
        _type(name, tuple(shape), weak, impl).abstract for name, shape, weak, impl in table.types
    ]
    return [distinct[i] for i in table.which]


@functools.lru_cache(maxsize=4096)
def _abstract(shape: tuple[int, ...], dtype: str, weak_type: bool, impl: str | None) -> Any:
    # Cached: a ShapeDtypeStruct costs ~5 us to build, and many leaves share a shape. It is immutable.
    if impl is not None:
        key_dtype = _key_dtype(impl)
        return jax.ShapeDtypeStruct(shape[: len(shape) - len(key_dtype._impl.key_shape)], key_dtype)
    return jax.ShapeDtypeStruct(shape, _dtypes.to_numpy(dtype), weak_type=weak_type)


@functools.cache
def _key_dtype(impl: str) -> Any:
    try:
        return jax.eval_shape(lambda: jax.random.key(0, impl=impl)).dtype
    except (ValueError, TypeError, KeyError) as err:
        raise HeaderError(f"unknown PRNG key impl {impl!r}: {err}") from None
