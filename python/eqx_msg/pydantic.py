"""pydantic types for JAX arrays and pytrees, with the header's schema as their JSON.

```python
import pydantic
from eqx_msg.pydantic import Array, Tree

class Run(pydantic.BaseModel):
    model: Tree                       # any pytree: an eqx.Module, an optax state, ...
    mean: Array["float32", "features"]   # dtype and shape constraints (a name matches any size)

run = Run(model=eqx.nn.MLP(2, 2, 8, 1, key=key), mean=jnp.zeros(2))
text = run.model_dump_json()          # the model as the header describes it: no bytes
abstract = Run.model_validate_json(text)   # ShapeDtypeStruct leaves, classes from the registry
```

In Python mode a field keeps what it was given. In JSON mode an `Array` is written as the header's
record of it (`eqx_msg.ArraySpec`: kind, dtype, shape, sharding, weak_type, key_impl) and a `Tree`
as the header's view of it (`eqx_msg.TreeView`: the tree of nodes, classes by registry name, static
fields by name, and a record per leaf). Validating that JSON gives `jax.ShapeDtypeStruct`s (with
their `NamedSharding` where one was recorded and its devices are here) in the structure the JSON
describes, rebuilt through the same registry as files: nothing is imported and no code the JSON
names is run. The JSON is checked by the same Rust core as a file's header, so it has one schema
and one set of rules.

Importing this module changes nothing in jax, equinox or pydantic.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import jax
import msgpack
import numpy as np
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from . import _core, _dtypes, _leaves, _place, _registry, _tree
from ._errors import EqxMsgError, UnserialisableError
from ._header import ArraySpec, TreeView
from ._record import Kind, LeafRecord

__all__ = ["Array", "Tree"]

_ARRAYS = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)


class _ArrayType:
    """The pydantic schema of an `Array` field, with its optional constraints."""

    def __init__(self, dtype: Any = None, shape: Any = None):
        self.dtype = None if dtype is None else _dtype_name(dtype)
        self.shape = _shape_pattern(shape)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        spec = handler.generate_schema(ArraySpec)
        return core_schema.json_or_python_schema(
            json_schema=core_schema.chain_schema(
                [spec, core_schema.no_info_plain_validator_function(self.from_spec)]
            ),
            python_schema=core_schema.no_info_plain_validator_function(self.validate),
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize_array, info_arg=True
            ),
        )

    def validate(self, value: Any) -> Any:
        """Python mode: an array or ShapeDtypeStruct as it is; a spec mapping (or `ArraySpec`) as
        the ShapeDtypeStruct it describes."""
        if isinstance(value, _ARRAYS):
            return self.constrained(value)
        if isinstance(value, ArraySpec | Mapping):
            return self.from_spec(value)
        raise ValueError(
            f"expected a jax or numpy array, a jax.ShapeDtypeStruct or a spec mapping "
            f"{{shape, dtype, ...}}, not {type(value).__name__}"
        )

    def from_spec(self, spec: Any) -> jax.ShapeDtypeStruct:
        """The ShapeDtypeStruct an array spec describes, checked by the Rust core."""
        if isinstance(spec, Mapping):
            spec = ArraySpec.model_validate({"kind": Kind.ABSTRACT, **spec})
        record: LeafRecord = {"path": "", **spec.model_dump(exclude_none=True)}  # type: ignore[typeddict-item]
        try:
            (leaf,) = _abstract_leaves([record])
        except EqxMsgError as err:  # the core names "leaf 0": here it is the field's spec
            raise type(err)(str(err).removeprefix("leaf 0 ").removeprefix("leaf 0: ")) from None
        return self.constrained(leaf)

    def constrained(self, value: Any) -> Any:
        """`value` if it meets the field's dtype and shape constraints, else ValueError."""
        if self.dtype is not None:
            name = _dtype_name(value.dtype)
            if name != self.dtype:
                raise ValueError(f"expected dtype {self.dtype}, got {name}")
        if self.shape is not None:
            shape = tuple(value.shape)
            if len(shape) != len(self.shape) or any(
                isinstance(want, int) and want != got for want, got in zip(self.shape, shape)
            ):
                want = tuple("*" if d is None else d for d in self.shape)
                raise ValueError(f"expected shape {want}, got {shape}")
        return value


class Array:
    """A pydantic field type for an array: `x: Array`, or with constraints `Array[dtype]`,
    `Array[dtype, shape]` (`Array["float32", "batch 128"]`, `Array[None, (None, 3)]`).

    **Python mode** takes a `jax.Array`, a numpy array or scalar, a `jax.ShapeDtypeStruct` (its
    sharding kept), or a spec mapping `{shape, dtype, sharding?, weak_type?, key_impl?}`, and keeps
    an array as it is. **JSON mode** writes and reads the spec: the header's record of the array
    (`eqx_msg.ArraySpec`, so `model_json_schema()` shows the header's own schema); read back, it is
    a `jax.ShapeDtypeStruct`, with its `NamedSharding` when the recorded devices are here (else a
    validation error naming them, from `eqx_msg.ShardingError`).

    A shape is a sequence or a space-separated string; an int must match, a name or None matches
    any size. Bad specs (an unknown dtype, a negative dimension, a sharding that does not split
    the array evenly) are refused by the Rust core with the message it gives a file.
    """

    def __class_getitem__(cls, params: Any) -> Any:
        dtype, shape = params if isinstance(params, tuple) else (params, None)
        return Annotated[Any, _ArrayType(dtype, shape)]

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _ArrayType().__get_pydantic_core_schema__(source, handler)


class Tree:
    """A pydantic field type for any pytree (an `eqx.Module`, an optax state, nested containers).

    **Python mode** keeps the pytree as it is. **JSON mode** writes the header's view of it
    (`eqx_msg.TreeView`: its tree of nodes, classes by public name, static fields by name, and a
    record per array leaf; no bytes) and reads that view back as the *abstract* pytree, with
    `jax.ShapeDtypeStruct` leaves, through the same registry as `load` (a class the registry does
    not trust is an `UnknownTypeError`, never imported). msgpack values JSON cannot hold are
    written as `{"$base64": ...}` (bytes) and `{"$float": "inf"}` (non-finite floats).
    """

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        view = handler.generate_schema(TreeView)
        return core_schema.json_or_python_schema(
            json_schema=core_schema.no_info_before_validator_function(
                _from_json,
                core_schema.chain_schema(
                    [view, core_schema.no_info_plain_validator_function(_rebuild)]
                ),
            ),
            python_schema=core_schema.any_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize_tree, info_arg=True
            ),
        )


def tree_view(tree: Any) -> dict[str, Any]:
    """The header's view of a pytree (`TreeView`'s fields), as plain msgpack-able data."""
    flat = _tree.flatten(tree)
    return {"leaves": flat.records, "tree": flat.tree}


def abstract_tree(view: TreeView | Mapping[str, Any], allow: Any = ()) -> Any:
    """The abstract pytree (ShapeDtypeStruct leaves) a header view describes.

    **Arguments:**
    - `view`: a `TreeView`, or a mapping of its fields (`{"tree": ..., "leaves": [...]}`).
    - `allow`: classes and functions trusted for this call, as for `load`.

    **Returns:** the pytree, classes rebuilt through the registry (nothing imported).
    """
    if not isinstance(view, TreeView):
        view = TreeView.model_validate(view)
    return _rebuild(view, allow)


def _rebuild(view: TreeView, allow: Any = ()) -> Any:
    records = [leaf.model_dump(exclude_none=True) for leaf in view.leaves]
    tree = view.model_dump(exclude_unset=True)["tree"]  # (a node's absent keys stay absent)
    leaves = _abstract_leaves(records, tree)  # type: ignore[arg-type]
    return _tree.unflatten(tree, leaves, _registry.allow_map(allow))


def _abstract_leaves(records: Sequence[LeafRecord], tree: Any = None) -> list[Any]:
    """The ShapeDtypeStructs of records (and the tree over them), once the Rust core has checked
    them as it checks a file's header: every record as an abstract leaf (no bytes)."""
    abstract = [
        {k: v for k, v in r.items() if k not in ("offset", "nbytes")} | {"kind": Kind.ABSTRACT}
        for r in records
    ]
    header = {
        "format": "eqx_msg",
        "version": _core.VERSION,
        "alignment": 64,
        "data_nbytes": 0,
        "leaves": abstract,
        "tree": {"t": "list", "c": list(range(len(records)))} if tree is None else tree,
    }
    try:
        encoded = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise UnserialisableError(f"not header data: {err}") from None
    _core.total_len(encoded)  # every rule of a header: dtypes, shapes, shardings, the tree
    out = []
    for record in records:
        leaf = _leaves.abstract_leaf(record)
        sharding = _place.saved_sharding(record, record.get("path", ""))
        if sharding is not None:
            leaf = jax.ShapeDtypeStruct(
                leaf.shape, leaf.dtype, weak_type=leaf.weak_type, sharding=sharding
            )
        out.append(leaf)
    return out


def _serialize_array(value: Any, info: Any) -> Any:
    if info.mode != "json":
        return value
    return {k: v for k, v in _tree.leaf_record(value, "").items() if k != "path"}


def _serialize_tree(value: Any, info: Any) -> Any:
    return _to_json(tree_view(value)) if info.mode == "json" else value


def _to_json(value: Any) -> Any:
    """msgpack data as JSON data: bytes and non-finite floats tagged (`_from_json` undoes it)."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$base64" in value and isinstance(value["$base64"], str):
            try:
                return base64.b64decode(value["$base64"], validate=True)
            except ValueError as err:
                raise ValueError(f"$base64: {err}") from None
        if len(value) == 1 and value.get("$float") in ("inf", "-inf", "nan"):
            return float(value["$float"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _dtype_name(dtype: Any) -> str:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return str(dtype)
    try:
        return _dtypes.name_of(np.dtype(dtype))
    except (TypeError, EqxMsgError) as err:
        raise ValueError(f"not a dtype eqx_msg stores: {dtype!r} ({err})") from None


def _shape_pattern(shape: Any) -> tuple[int | None, ...] | None:
    if shape is None:
        return None
    dims = shape.split() if isinstance(shape, str) else list(shape)
    return tuple(int(d) if isinstance(d, int) or str(d).isdigit() else None for d in dims)
