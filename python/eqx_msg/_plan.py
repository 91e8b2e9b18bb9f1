"""What a write lays out: a pytree's header (tree, leaf records with their byte ranges,
metadata, writer versions), encoded, and the objects whose bytes each leaf stores."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

import equinox
import jax
import msgpack
import numpy as np
import pydantic

from . import _core, _gc, _static, _tree
from ._errors import (
    LayoutError,
    UnserialisableError,
)
from ._header import FORMAT_NAME
from ._record import Kind, LeafRecord

WRITER = {
    "eqx_msg": _core.__version__,
    "jax": jax.__version__,
    "equinox": getattr(equinox, "__version__", "unknown"),
    "numpy": np.__version__,
    "python": ".".join(map(str, sys.version_info[:3])),
}


class Plan(NamedTuple):
    """What a writer needs: the encoded header, and per leaf its record (with range) and source."""

    header: bytes
    records: list[LeafRecord]
    sources: list[Any]
    data_nbytes: int


def _plain(metadata: Any) -> Any:
    """The metadata as msgpack data: a pydantic model as its JSON-mode dump (`Reader.metadata_as`
    validates it back)."""
    if isinstance(metadata, pydantic.BaseModel):
        return metadata.model_dump(mode="json")
    return metadata


def plan(tree: Any, metadata: Any, alignment: int, unstorable: str = "error") -> Plan:
    """Flatten `tree`, lay its leaves out at `alignment` and encode the header; `unstorable` says
    what a function that cannot be stored by name becomes ("error" or "placeholder")."""
    if unstorable not in ("error", "placeholder"):
        raise ValueError(f"unstorable={unstorable!r}: 'error' or 'placeholder'")
    if (
        type(alignment) is not int
        or not _core.MIN_ALIGNMENT <= alignment <= _core.MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise LayoutError(
            f"alignment={alignment!r}: a power of two from {_core.MIN_ALIGNMENT} to "
            f"{_core.MAX_ALIGNMENT} is needed"
        )
    mode = _static.UNSTORABLE.set(unstorable)
    try:
        with _gc.paused():
            flat = _tree.flatten(tree)
    finally:
        _static.UNSTORABLE.reset(mode)
    stored = [r for r in flat.records if r["kind"] != Kind.ABSTRACT]
    sizes = [_core.storage_nbytes(r["dtype"], r["shape"]) for r in stored]
    offsets, data_nbytes = _core.layout(sizes, alignment)
    for record, offset, nbytes in zip(stored, offsets, sizes):
        record["offset"] = offset
        record["nbytes"] = nbytes
    header = {
        "format": FORMAT_NAME,
        "version": _core.VERSION,
        "alignment": alignment,
        "data_nbytes": data_nbytes,
        "leaves": flat.records,
        "tree": flat.tree,
        "metadata": _plain(metadata),
        "writer": WRITER,
    }
    try:
        encoded = msgpack.packb(header, use_bin_type=True, default=_metadata_scalar)
    except (TypeError, ValueError, OverflowError) as err:
        where = _metadata_problem(metadata, "metadata")
        if where is None:  # the tree's own values (a str that is not valid UTF-8)
            where = _metadata_problem({"tree": flat.tree, "leaves": flat.records}, "the header")
            raise UnserialisableError(f"{where}: cannot be stored in the header: {err}") from None
        raise UnserialisableError(
            f"{where}: metadata must be msgpack data (dict, list, str, bytes, numbers, bool, None; "
            f"real numpy and jax scalars become numbers): {err}"
        ) from None
    return Plan(encoded, flat.records, flat.sources, data_nbytes)


def _metadata_scalar(value: Any) -> Any:
    """msgpack's hook for what it cannot store: a numpy or 0-d jax scalar in metadata, as a number."""
    if (
        isinstance(value, np.generic | jax.Array)
        and isinstance(value.dtype, np.dtype)  # (not a PRNG key)
        and value.ndim == 0
    ):
        if value.dtype.kind in "biu":
            return value.item()
        if jax.dtypes.issubdtype(value.dtype, np.integer):  # int4, uint2, ...
            return int(value)
        if jax.dtypes.issubdtype(value.dtype, np.floating):  # bfloat16 and float8 too
            return float(value)
    raise TypeError(f"cannot store a {type(value).__module__}.{type(value).__qualname__}")


def _metadata_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """The key path of the first value in `metadata` that msgpack cannot store (on failure only)."""
    items: Iterable[tuple[Any, Any]]
    if depth > _core.MAX_DEPTH:
        return f"{where} (nested past the header's limit)"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        try:
            msgpack.packb(value, use_bin_type=True, default=_metadata_scalar)
            return None
        except (TypeError, ValueError, OverflowError):
            return where
    for key, item in items:
        found = (
            _metadata_problem(key, f"{where} key {key!r}", depth + 1)
            if isinstance(value, dict)
            else None
        )
        found = found or _metadata_problem(item, f"{where}[{key!r}]", depth + 1)
        if found:
            return found
    return None
