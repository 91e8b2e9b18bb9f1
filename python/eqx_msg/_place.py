"""Putting host arrays on devices: batched for many small leaves, sharding-aware for large ones.

On the CPU a 64-byte-aligned, C-contiguous host array is aliased by XLA, so placing a view of a memory
map copies nothing. Per-array overhead dominates many small leaves (`jax.device_put` of a list costs
30-100 us an array); jaxlib's `batched_device_put`, called with an aval built once per leaf type, costs
about 4 us, so small leaves go through it (falling back to `jax.device_put` if a jax version lacks
it). Large leaves go through one `jax.device_put` call so that their transfers run concurrently on
accelerators.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from ._errors import ShardingError, at
from ._record import LeafRecord, ShardingRecord

try:  # private, but the cheapest array construction JAX has; guarded so a jax upgrade only slows us
    from jax._src import core as _jax_core
    from jax._src.lib import xla_client as _xc

    _batched_device_put = _xc.batched_device_put
except (ImportError, AttributeError):  # pragma: no cover - depends on the jax version
    _batched_device_put = None

_LARGE = 1 << 20  # leaves at least this big move in one concurrent device_put call


def put(
    hosts: Sequence[np.ndarray],
    avals: Sequence[Any],
    device: Any = None,
    shardings: Sequence[Sharding | None] | None = None,
) -> list[jax.Array]:
    """Place host arrays: each on its sharding if given, else on `device` (default: JAX's default).

    `avals[i]` is `aval(shape, dtype, weak_type)` of `hosts[i]`: shared by leaves of one type.
    """
    target = _single_device(device)
    committed = device is not None
    out: list[Any] = [None] * len(hosts)
    if shardings is not None:
        for i, sharding in enumerate(shardings):
            if sharding is not None:
                out[i] = _from_callback(hosts[i], sharding, avals[i])
    large = [
        i
        for i, (host, abstract, placed) in enumerate(zip(hosts, avals, out))
        if placed is None and host.nbytes >= _LARGE and not abstract.weak_type
    ]
    if large:
        placed = jax.device_put([hosts[i] for i in large], target if committed else None)
        for i, array in zip(large, placed):
            out[i] = array
    small = [i for i, placed in enumerate(out) if placed is None]
    _put_each(hosts, avals, small, out, target, committed)
    return out


def _put_each(
    hosts: Sequence[np.ndarray],
    avals: Sequence[Any],
    indices: Sequence[int],
    out: list[Any],
    target: Any,
    committed: bool,
) -> None:
    """Place `hosts[i]` for each `i` in `indices` into `out[i]`, one array at a time."""
    global _batched_device_put
    if _batched_device_put is not None:
        single, devices = SingleDeviceSharding(target), [target]
        try:
            for i in indices:
                out[i] = _batched_device_put(avals[i], single, [hosts[i]], devices, committed)
            return
        except TypeError:  # a jaxlib whose private signature changed: the public path from now on
            _batched_device_put = None
    # No public way to make a weak-typed array from host data: weak_type is lost here.
    for i in indices:
        if out[i] is None:
            out[i] = jax.device_put(hosts[i], target if committed else None)


@functools.lru_cache(maxsize=4096)
def aval(shape: tuple[int, ...], dtype: np.dtype, weak_type: bool) -> Any:
    """JAX's abstract value of a host array: built once per leaf type (a ShapedArray costs ~5 us)."""
    if _batched_device_put is None:  # pragma: no cover - depends on the jax version
        return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak_type)
    return _jax_core.ShapedArray(shape, dtype, weak_type=weak_type)


def _from_callback(host: np.ndarray, sharding: Sharding, abstract: Any) -> jax.Array:
    """Build a sharded array; each device reads only its own slice of the host array (the map)."""
    if abstract.weak_type and _batched_device_put is not None:
        # make_array_from_callback drops weak_type; this is what it does, with our aval.
        indices = sharding.addressable_devices_indices_map(host.shape)
        devices = list(indices)
        return _batched_device_put(
            abstract, sharding, [host[indices[d]] for d in devices], devices, True
        )
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _single_device(device: Any) -> Any:
    if device is None:
        return jax.devices()[0]
    if isinstance(device, Sharding):
        devices = device.device_set
        if len(devices) != 1:
            raise ShardingError(f"device= takes one device; pass sharding= for {device}")
        return next(iter(devices))
    return device


def sharding_record(array: jax.Array | jax.ShapeDtypeStruct) -> ShardingRecord | None:
    """How a jax.Array (or a ShapeDtypeStruct) is laid out (FORMAT.md section 7), or None unless it
    has a NamedSharding."""
    sharding = getattr(array, "sharding", None)
    if type(sharding) is SingleDeviceSharding or not isinstance(sharding, NamedSharding):
        return None  # (the exact-type test first: an ABC's isinstance costs ~0.2 us a leaf)
    mesh = sharding.mesh
    return {
        "mesh_axes": [str(a) for a in mesh.axis_names],
        "mesh_shape": [int(s) for s in mesh.devices.shape],
        "device_ids": [int(d.id) for d in mesh.devices.flat],
        "spec": [list(e) if isinstance(e, tuple) else e for e in sharding.spec],
        "memory_kind": sharding.memory_kind,
    }


def saved_sharding(record: LeafRecord, path: str) -> NamedSharding | None:
    """Rebuild the `NamedSharding` a leaf was saved with; `ShardingError` if its devices are not
    all here or they cannot hold it.

    The record was checked by the Rust core when the file was opened (FORMAT.md section 7: a mesh
    of distinct axes and devices, a spec naming its axes that splits the array evenly).
    """
    info = record.get("sharding")
    if info is None:
        return None
    axes, sizes, ids = info["mesh_axes"], info["mesh_shape"], info["device_ids"]
    spec = [tuple(e) if isinstance(e, list) else e for e in info["spec"]]
    devices = {d.id: d for d in jax.devices()}
    missing = [i for i in ids if i not in devices]
    if missing:
        raise ShardingError(
            f"{at(path)}: saved on devices {ids} (mesh {dict(zip(axes, sizes))}), but devices "
            f"{missing} are not present here ({len(devices)} devices). Pass sharding= with a "
            "layout for these devices."
        )
    grid = np.array([devices[i] for i in ids], dtype=object)
    try:
        mesh = Mesh(grid.reshape(sizes), tuple(axes))
        return NamedSharding(mesh, PartitionSpec(*spec), memory_kind=info.get("memory_kind"))
    except (ValueError, TypeError, RuntimeError) as err:  # e.g. a memory kind these devices lack
        raise ShardingError(f"{at(path)}: the saved sharding does not fit here: {err}") from None


def resolve_shardings(
    sharding: Any, records: Sequence[LeafRecord], abstract: Callable[[int], Any]
) -> list[Sharding | None] | None:
    """One sharding (or None) per record from load's `sharding=`.

    `sharding` may be None, a `Sharding` for every leaf, `"saved"`, a callable
    `(key_path, ShapeDtypeStruct) -> Sharding | None`, or a pytree of shardings matched by key path.
    """
    if sharding is None:
        return None
    if isinstance(sharding, Sharding):
        return [sharding] * len(records)
    if isinstance(sharding, str):
        if sharding != "saved":
            raise ShardingError(f"sharding={sharding!r}: the only string accepted is 'saved'")
        return [saved_sharding(r, r["path"]) for r in records]
    if callable(sharding):
        return [sharding(r["path"], abstract(i)) for i, r in enumerate(records)]
    by_path = {
        jax.tree_util.keystr(p): s
        for p, s in jax.tree_util.tree_flatten_with_path(
            sharding, is_leaf=lambda x: isinstance(x, Sharding)
        )[0]
    }
    unknown = set(by_path) - {r["path"] for r in records}
    if unknown:
        raise ShardingError(f"sharding= names key paths not in the file: {sorted(unknown)[:5]}")
    return [by_path.get(r["path"]) for r in records]
