"""Array leaves: the bytes a leaf stores when writing, and the leaf object rebuilt when reading."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import numpy as np

from . import _core, _dtypes, _place
from ._errors import DTypeError, HeaderError, LayoutError, at, warn
from ._record import KINDS, PLACED, Kind, LeafRecord

# Dtypes a jax.Array holds only with jax_enable_x64 on (JAX narrows them otherwise).
_X64_ONLY = frozenset({"int64", "uint64", "float64", "complex128"})
_KEYS_ONLY = frozenset({Kind.KEY})  # with as_numpy: numpy has no typed PRNG keys


def host_array(record: LeafRecord, source: Any) -> np.ndarray:
    """The bytes to store for one leaf with data: C-contiguous, little-endian, sub-byte types packed.

    Device arrays come to the host here (one leaf at a time).
    """
    kind = record["kind"]
    array = np.asarray(jax.random.key_data(source) if kind == Kind.KEY else source)
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


def table_of(records: Sequence[LeafRecord]) -> Table:
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
    weak_type: bool
    key_impl: str | None
    abstract: jax.ShapeDtypeStruct
    x64_only: bool


@functools.lru_cache(maxsize=4096)
def _type(name: str, shape: tuple[int, ...], weak_type: bool, key_impl: str | None) -> _Type:
    return _Type(
        _dtypes.to_numpy(name),
        shape,
        weak_type,
        key_impl,
        _abstract(shape, name, weak_type, key_impl),  # an unknown key impl: HeaderError, up front
        name in _X64_ONLY,
    )


@functools.cache
def _jax_holds(dtype: np.dtype) -> bool:
    """Whether a `jax.Array` can hold `dtype` here (XLA has no float6, and each jax version takes up
    ml_dtypes' newer types later): found once per dtype by placing one element on the default device.
    """
    if dtype.kind in "biufc":  # numpy's own types
        return True
    try:
        jax.block_until_ready(jax.device_put(np.zeros(1, dtype)))
    except Exception:  # a TypeError from jax, an XlaRuntimeError from XLA: either way, it cannot
        return False
    return True


def _types(table: Table) -> list[_Type]:
    return [_type_of(table, t) for t in range(len(table.types))]  # one per distinct type: few


def _type_of(table: Table, t: int) -> _Type:
    """The `_Type` of a table's type `t`; an error names the first leaf of that type."""
    name, shape, weak, impl = table.types[t]
    try:
        return _type(name, tuple(shape), weak, impl)
    except (HeaderError, DTypeError) as err:
        raise type(err)(f"leaf {list(table.which).index(t)}: {err}") from None


def numpy_dtypes(table: Table) -> list[np.dtype]:
    """The numpy dtype of each of a table's types: what `_core.FileHeader.arrays` views bytes as.

    A dtype of the format that the installed ml_dtypes lacks gets a void placeholder of its width,
    so the file's other leaves stay readable: `refuse_unreadable` stops its own leaves.
    """
    dtypes = []
    for t, (name, *_) in enumerate(table.types):
        try:
            dtypes.append(_type_of(table, t).dtype)
        except DTypeError:
            dtypes.append(np.dtype(f"V{max(_core.dtype_bits(name), 8) // 8}"))
    return dtypes


def refuse_unreadable(
    table: Table,
    dtypes: Sequence[np.dtype],
    indices: Sequence[int] | None,
    paths: Callable[[], Sequence[str]],
) -> None:
    """`DTypeError` naming the first leaf among `indices` (all if None) whose `numpy_dtypes` entry is
    a placeholder: a dtype the installed ml_dtypes cannot hold."""
    placeholders = {t for t, dtype in enumerate(dtypes) if dtype.type is np.void}
    if not placeholders:
        return
    for i in range(len(table.which)) if indices is None else indices:
        if table.which[i] in placeholders:
            try:
                _dtypes.to_numpy(table.types[table.which[i]][0])
            except DTypeError as err:
                raise DTypeError(f"{at(paths()[i])}: {err}") from None


def _type_key(record: LeafRecord) -> tuple[str, tuple[int, ...], bool, str | None]:
    """A record's `(dtype, shape, weak_type, key_impl)`."""
    return (
        record["dtype"],
        tuple(record["shape"]),
        bool(record.get("weak_type")),
        record.get("key_impl"),
    )


def build_leaves(
    table: Table,
    hosts: Sequence[np.ndarray | None],
    device: Any = None,
    shardings: Sequence[Any] | None = None,
    paths: Callable[[], Sequence[str]] | None = None,
    as_numpy: bool = False,
) -> list[Any]:
    """Rebuild the leaf objects of a header's `table` from each leaf's data in `hosts`.

    `hosts[i]` is leaf `i`'s data as `_core.FileHeader.arrays` gives it (a view into the file), or
    None for leaves that become `jax.ShapeDtypeStruct` (abstract, or not selected). numpy leaves are
    those views; jax and key leaves are placed on devices in one batch (`device` / `shardings`: see
    `_place.put`), except that with `as_numpy` jax leaves stay views too. `paths()` names leaves in
    warnings.
    """
    # Column-wise, in comprehensions: at 10k leaves a per-leaf Python loop costs as much as JAX.
    placed_kinds = _KEYS_ONLY if as_numpy else PLACED
    types = _types(table)
    kinds, which = table.kinds, table.which
    leaves: list[Any] = list(hosts)
    unknown = set(kinds) - KINDS
    if unknown:
        raise LayoutError(f"unknown leaf kinds {sorted(unknown)}")
    for i in [i for i, host in enumerate(hosts) if host is None]:
        leaves[i] = types[which[i]].abstract
    for i in [i for i, kind in enumerate(kinds) if kind == Kind.NUMPY_SCALAR]:
        host = hosts[i]
        if host is not None:
            leaves[i] = host[()]
    to_place = [
        i
        for i, (kind, host) in enumerate(zip(kinds, hosts))
        if kind in placed_kinds and host is not None
    ]
    unheld = {t for t in {which[i] for i in to_place} if not _jax_holds(types[t].dtype)}
    if unheld:
        for i in to_place:
            if which[i] in unheld:
                where = at(paths()[i]) if paths is not None else f"leaf {i}"
                raise DTypeError(
                    f"{where}: a jax leaf of dtype {types[which[i]].dtype.name}, which JAX has no "
                    "arrays of; load with as_numpy=True to read its data"
                )
    if not jax.config.read("jax_enable_x64") and any(t.x64_only for t in types):
        # 64-bit data stays exact: numpy, never a silently narrowed jax array.
        numpy_instead = [i for i in to_place if kinds[i] == Kind.JAX and types[which[i]].x64_only]
        if numpy_instead:
            _warn_x64(numpy_instead, paths)
            skipped = set(numpy_instead)
            to_place = [i for i in to_place if i not in skipped]
    avals = [_place.aval(t.shape, t.dtype, t.weak_type) for t in types] if to_place else []
    placed = _place.put(
        cast(list[np.ndarray], [hosts[i] for i in to_place]),  # (to_place holds leaves with data)
        [avals[which[i]] for i in to_place],
        device,
        None if shardings is None else [shardings[i] for i in to_place],
    )
    for i, array in zip(to_place, placed):
        leaves[i] = array
    for i in [i for i in to_place if kinds[i] == Kind.KEY]:
        leaves[i] = jax.random.wrap_key_data(leaves[i], impl=types[which[i]].key_impl)
    return leaves


def _warn_x64(indices: Sequence[int], paths: Callable[[], Sequence[str]] | None) -> None:
    names = paths() if paths is not None else None
    shown = [names[i] if names is not None else f"leaf {i}" for i in indices[:3]]
    warn(
        f"{len(indices)} 64-bit jax leaves ({', '.join(shown)}...) load as numpy arrays "
        "because jax_enable_x64 is off; enable it to get jax arrays"
    )


def abstract_leaf(record: LeafRecord) -> jax.ShapeDtypeStruct:
    """The `jax.ShapeDtypeStruct` a record describes (typed PRNG keys included)."""
    return _type(*_type_key(record)).abstract


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
        key_shape = tuple(key_dtype._impl.key_shape)
        if (
            dtype != "uint32"
            or len(shape) < len(key_shape)
            or shape[len(shape) - len(key_shape) :] != key_shape
        ):
            raise HeaderError(
                f"a {impl} key leaf holds uint32 data of shape (..., {', '.join(map(str, key_shape))}), "
                f"not {dtype} of shape {shape}"
            )
        return jax.ShapeDtypeStruct(shape[: len(shape) - len(key_shape)], key_dtype)
    return jax.ShapeDtypeStruct(shape, _dtypes.to_numpy(dtype), weak_type=weak_type)


@functools.cache
def _key_dtype(impl: str) -> Any:
    try:
        return jax.eval_shape(lambda: jax.random.key(0, impl=impl)).dtype
    except (ValueError, TypeError, KeyError) as err:
        raise HeaderError(f"unknown PRNG key impl {impl!r}: {err}") from None
