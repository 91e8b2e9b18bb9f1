"""Array leaves: the bytes a leaf stores when writing, and the leaf object rebuilt when reading."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

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


def host_view(buf: np.ndarray, record: dict[str, Any], data_start: int) -> np.ndarray:
    """A leaf's data as a numpy array: a read-only view into `buf` (a copy for packed dtypes)."""
    name, shape = record["dtype"], record["shape"]
    start = data_start + record["offset"]
    bits = _dtypes.PACKED_BITS.get(name)
    if bits is not None:
        raw = buf[start : start + record["nbytes"]]
        unpacked = _core.unpack_subbyte(raw, bits, math.prod(shape))
        return np.frombuffer(unpacked, _dtypes.to_numpy(name)).reshape(shape)
    # frombuffer of the read-only base is the cheapest view numpy has (~0.6 us; it matters at 10k leaves)
    array = np.frombuffer(buf, _dtypes.to_numpy(name), math.prod(shape), start)
    return array if len(shape) == 1 else array.reshape(shape)


def build_leaves(
    records: Sequence[dict[str, Any]],
    buf: np.ndarray,
    data_start: int,
    device: Any = None,
    shardings: Sequence[Any] | None = None,
    selected: Sequence[bool] | None = None,
) -> list[Any]:
    """Rebuild every leaf object of `records` from the file bytes in `buf`.

    numpy leaves are read-only views of `buf`; jax and key leaves are placed on devices in one
    batch (`device` / `shardings`: see `_place.put`); abstract leaves, and leaves not `selected`,
    become `jax.ShapeDtypeStruct` without their bytes being read.
    """
    leaves: list[Any] = [None] * len(records)
    to_place: list[int] = []
    hosts: list[np.ndarray] = []
    numpy_instead: list[str] = []
    x64 = jax.config.jax_enable_x64
    for i, record in enumerate(records):
        kind = record["kind"]
        if selected is not None and not selected[i]:
            kind = "abstract"
        if kind == "numpy":
            leaves[i] = host_view(buf, record, data_start)
        elif kind == "jax" and (x64 or record["dtype"] not in _X64_ONLY):
            to_place.append(i)
            hosts.append(host_view(buf, record, data_start))
        elif kind == "jax":  # 64-bit data stays exact: numpy, never a silently narrowed jax array
            leaves[i] = host_view(buf, record, data_start)
            numpy_instead.append(record["path"])
        elif kind == "key":
            _key_dtype(record["key_impl"])  # an unknown impl is a HeaderError, before any work
            to_place.append(i)
            hosts.append(host_view(buf, record, data_start))
        elif kind == "numpy_scalar":
            leaves[i] = host_view(buf, record, data_start)[()]
        elif kind == "abstract":
            leaves[i] = abstract_leaf(record)
        else:
            raise LayoutError(f"leaf {i} ({record.get('path')}): unknown kind {kind!r}")
    if numpy_instead:
        warnings.warn(
            f"{len(numpy_instead)} 64-bit jax leaves ({', '.join(numpy_instead[:3])}...) load as "
            "numpy arrays because jax_enable_x64 is off; enable it to get jax arrays",
            stacklevel=3,
        )
    placed = _place.put(
        hosts,
        [bool(records[i].get("weak_type")) for i in to_place],
        device,
        None if shardings is None else [shardings[i] for i in to_place],
    )
    for i, array in zip(to_place, placed):
        impl = records[i].get("key_impl")
        leaves[i] = array if impl is None else jax.random.wrap_key_data(array, impl=impl)
    return leaves


def abstract_leaf(record: dict[str, Any]) -> jax.ShapeDtypeStruct:
    """The `jax.ShapeDtypeStruct` a record describes (typed PRNG keys included)."""
    return _abstract(
        tuple(record["shape"]),
        record["dtype"],
        bool(record.get("weak_type", False)),
        record.get("key_impl"),
    )


def abstract_leaves(
    types: Sequence[tuple[str, Sequence[int], bool, str | None]], which: Sequence[int]
) -> list[jax.ShapeDtypeStruct]:
    """Every leaf's `jax.ShapeDtypeStruct`, from `_core.FileHeader.leaf_types()`.

    `types` are the distinct `(dtype, shape, weak_type, key_impl)`; leaf `i` has `types[which[i]]`.
    """
    distinct = [_abstract(tuple(shape), dtype, weak, impl) for dtype, shape, weak, impl in types]
    return [distinct[i] for i in which]


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
