"""The leaf record (FORMAT.md section 3), as the one type every part of the Python side passes.

A record is a plain dict at run time, the shape msgpack writes and reads, so that writing 10,000
leaves builds no objects besides them; `LeafRecord` types its keys for the checker. The public,
validated model of the same record is `eqx_msg.LeafSpec` (`_header.py`).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class Kind:
    """A leaf record's `kind` (FORMAT.md section 3): the one place Python spells them (the
    pydantic model's `LeafKind` literal, for the schema, is checked against `KINDS` by a test)."""

    NUMPY = "numpy"
    NUMPY_SCALAR = "numpy_scalar"
    JAX = "jax"
    KEY = "key"
    ABSTRACT = "abstract"


KINDS = frozenset({Kind.NUMPY, Kind.NUMPY_SCALAR, Kind.JAX, Kind.KEY, Kind.ABSTRACT})
PLACED = frozenset({Kind.JAX, Kind.KEY})  # the kinds that go to a device


class ShardingRecord(TypedDict):
    """How a jax leaf was laid out over devices when saved (FORMAT.md section 7)."""

    mesh_axes: list[str]
    mesh_shape: list[int]
    device_ids: list[int]
    spec: list[Any]
    memory_kind: str | None


class LeafRecord(TypedDict):
    """One array leaf: what the writer plans and stores, and what a reader gets back.

    `offset` and `nbytes` are added by the planner (absent on abstract leaves); `index` is added by
    `_core.FileHeader.find` (the record's position in the header).
    """

    path: str
    kind: str
    dtype: str
    shape: list[int]
    offset: NotRequired[int]
    nbytes: NotRequired[int]
    weak_type: NotRequired[bool]
    key_impl: NotRequired[str | None]
    sharding: NotRequired[ShardingRecord | None]
    index: NotRequired[int]
