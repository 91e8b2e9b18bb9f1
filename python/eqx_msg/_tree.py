"""Pytrees to header tree nodes and back (FORMAT.md section 4).

`flatten` walks a pytree once, in the spirit of `jax.tree_util.tree_flatten_with_path`, and returns the
header's tree node, one record per array leaf (with its key path) and the array objects themselves.
`unflatten` rebuilds the pytree from the tree node and the loaded leaves; classes come only from the
registry. Builtin containers are handled directly (dict keys keep their insertion order); every other
node is flattened one level by JAX itself, so anything registered with JAX works, and rebuilt by JAX's
own unflatten for its class (Equinox Modules are rebuilt without calling `__init__`).
"""

from __future__ import annotations

import bisect
import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
import pydantic
from jax._src.tree_util import default_registry
from pydantic_core import PydanticSerializationError

from . import _core, _dtypes, _generic, _modules, _place, _registry, _static
from ._errors import (
    DTypeError,
    EqxMsgError,
    HeaderError,
    KeyPath,
    LimitError,
    StructureMismatchError,
    UnknownTypeError,
    UnserialisableError,
    Where,
    at,
)
from ._record import Kind, LeafRecord

_ArrayImpl = type(jax.numpy.zeros(()))
_LEAF_TREEDEF = jtu.tree_structure(0)
_PY_SCALARS = (bool, int, float, complex, str, bytes)
_M = TypeVar("_M", bound=Mapping[Any, Any])
# Containers JAX flattens natively; a file stores them as "dict", "list", ... nodes, never "node".
_BUILTIN_NODES = frozenset(
    {
        dict,
        list,
        tuple,
        type(None),
        collections.OrderedDict,
        collections.defaultdict,
        collections.deque,
    }
)
# A container node at depth d is a map at header level 2 + 2d holding its children's array at 3 + 2d.
MAX_NESTING = (_core.MAX_DEPTH - 3) // 2 + 1


class Tag:
    """The `t` of each kind of tree node (FORMAT.md section 4): the one place they are spelled."""

    DICT = "dict"
    ORDEREDDICT = "ordereddict"
    DEFAULTDICT = "defaultdict"
    LIST = "list"
    TUPLE = "tuple"
    NAMEDTUPLE = "namedtuple"
    NODE = "node"
    NONE = "none"
    VALUE = "value"
    MODEL = "model"


# The tags of nodes with children (`c`); a `c` on any other node is not read.
_CONTAINERS = frozenset(
    {Tag.DICT, Tag.ORDEREDDICT, Tag.DEFAULTDICT, Tag.LIST, Tag.TUPLE, Tag.NAMEDTUPLE, Tag.NODE,
     Tag.MODEL}
)  # fmt: skip

# Container tags -> the class a node of that tag rebuilds as.
MAPPINGS: dict[str, type] = {
    Tag.DICT: dict,
    Tag.ORDEREDDICT: collections.OrderedDict,
    Tag.DEFAULTDICT: collections.defaultdict,
}
SEQUENCES: dict[str, type] = {Tag.LIST: list, Tag.TUPLE: tuple}


# How a child's key extends its parent's key path (as jax.tree_util.keystr writes it).
def index_key(i: int) -> str:
    """A list or tuple child's key: `[0]`."""
    return f"[{i}]"


def dict_key(key: Any) -> str:
    """A mapping child's key: its key's repr in brackets, `['a']`."""
    return f"[{key!r}]"


def field_key(name: str) -> str:
    """A namedtuple field's key: `.name` (a `node` stores its children's keys as JAX writes them)."""
    return f".{name}"


def child_keys(node: dict[str, Any], where: str) -> list[str] | None:
    """The keys of a container node's children, in order, that extend its key path `where`; None
    where the file does not say them: a `node` or `namedtuple` without `keys` (written before nodes
    had them), or mapping keys that do not decode without the registry. The one reading of child
    keys that the key-path lookups of a header tree share.

    The node is from a header the Rust core has checked (FORMAT.md section 4's structural rules:
    tags, required keys and their types, `keys` as long as `c`), so it is read without checks.
    """
    tag = node["t"]
    if tag in SEQUENCES:
        return [index_key(i) for i in range(len(node["c"]))]
    if tag in MAPPINGS:
        try:
            return [dict_key(_static.decode(key, {}, where)) for key in node["k"]]
        except (HeaderError, UnknownTypeError):
            return None
    if tag in (Tag.NODE, Tag.NAMEDTUPLE, Tag.MODEL):
        names = node.get("keys")
        if names is None:
            return None
        return [field_key(name) for name in names] if tag == Tag.NAMEDTUPLE else names
    return []


class Flat(NamedTuple):
    """A flattened pytree: the header's tree node, the leaf records, and the leaf objects."""

    tree: dict[str, Any] | int
    records: list[LeafRecord]
    sources: list[Any]


def flatten(tree: Any) -> Flat:
    """Flatten `tree` into a tree node, leaf records (no offsets yet) and the array leaves.

    An array leaf's node is the plain integer index of its record (compact for many small leaves).
    """
    records: list[LeafRecord] = []
    sources: list[Any] = []
    return Flat(_Flattener(records, sources).walk(tree, ""), records, sources)


class _Flattener:
    def __init__(self, records: list[LeafRecord], sources: list[Any]):
        self.records = records
        self.sources = sources
        self.depth = 0  # containers open around the node being walked

    @property
    def level(self) -> int:
        """The header nesting level of the node being walked: a map, below its parents' arrays."""
        return 2 + 2 * self.depth

    def walk(self, obj: Any, path: str) -> dict[str, Any] | int:
        kind = type(obj)
        if kind is np.ndarray:  # the hot path for many small leaves, inlined
            name = _dtypes.name_cache.get(obj.dtype) or _dtype(obj.dtype, path)
            self.records.append(
                {"path": path, "kind": Kind.NUMPY, "dtype": name, "shape": list(obj.shape)}
            )
            self.sources.append(obj)
            return len(self.sources) - 1
        if kind is _ArrayImpl:
            return self.leaf(obj, path)
        if kind is dict:
            return self.mapping(Tag.DICT, obj, path)
        if kind is list or kind is tuple:
            return {
                "t": Tag.LIST if kind is list else Tag.TUPLE,
                "c": self.descend(path, ((v, path + index_key(i)) for i, v in enumerate(obj))),
            }
        if obj is None:
            return {"t": Tag.NONE}
        if kind in _PY_SCALARS:
            return {"t": Tag.VALUE, "v": _static.encode(obj, path, self.level + 1), "p": path}
        if isinstance(obj, jax.Array | jax.ShapeDtypeStruct | np.ndarray | np.generic):
            return self.leaf(obj, path)
        if kind is collections.OrderedDict:
            return self.mapping(Tag.ORDEREDDICT, obj, path)
        if kind is collections.defaultdict:
            node = self.mapping(Tag.DEFAULTDICT, obj, path)
            node["factory"] = _static.encode(
                obj.default_factory, f"{path}.default_factory", self.level + 1
            )
            return node
        if isinstance(obj, pydantic.BaseModel):
            return self.model(obj, path)
        if isinstance(obj, tuple) and hasattr(kind, "_fields"):
            return {
                "t": Tag.NAMEDTUPLE,
                "cls": _registry.name_of(kind, path),
                "keys": list(kind._fields),
                "c": self.descend(
                    path, ((v, path + field_key(f)) for f, v in zip(kind._fields, obj))
                ),
            }
        return self.custom(obj, path)

    def descend(self, path: str, children: Iterable[tuple[Any, str]]) -> list[dict[str, Any] | int]:
        """Walk the `(child, key path)` pairs of the container at `path`, one level down."""
        self.depth += 1
        if self.depth > MAX_NESTING:  # each level is a map and its array in the header
            raise LimitError(
                f"{at(path)}: the tree nests containers {self.depth} deep here; a file "
                f"holds at most {MAX_NESTING} levels (the header's nesting limit, FORMAT.md section 2)"
            )
        nodes = [self.walk(child, path) for child, path in children]
        self.depth -= 1
        return nodes

    def mapping(self, tag: str, obj: Mapping[Any, Any], path: str) -> dict[str, Any]:
        return {
            "t": tag,
            "k": [_static.encode(k, path, self.level + 2) for k in obj],
            "c": self.descend(path, ((v, path + dict_key(k)) for k, v in obj.items())),
        }

    def model(self, obj: pydantic.BaseModel, path: str) -> dict[str, Any]:
        """A pydantic model: fields holding arrays (or models) as children, the rest inline, as
        pydantic's own JSON-mode dump of them (FORMAT.md section 4, `model`)."""
        static: dict[str, Any] = {}
        children: list[tuple[Any, str]] = []
        names = [*type(obj).model_fields, *(obj.model_extra or {})]
        for name in names:
            value = getattr(obj, name)
            key = path + field_key(name)
            if _holds_arrays(value):
                children.append((value, key))
                continue
            try:
                plain = obj.model_dump(mode="json", include={name}).get(name)
            except PydanticSerializationError as err:
                raise UnserialisableError(f"{at(key)}: pydantic cannot dump it: {err}") from None
            static[name] = _static.encode(plain, key, self.level + 2)
        return {
            "t": Tag.MODEL,
            "cls": _registry.name_of(type(obj), path),
            "static": static,
            "keys": [key[len(path) :] for _, key in children],
            "c": self.descend(path, children),
        }

    def custom(self, obj: Any, path: str) -> dict[str, Any]:
        """A node registered with JAX (Module, optax state, ...), or a non-array leaf."""
        if type(obj) is _generic.GenericNode:  # written back as the node it was read from
            return {
                **_generic.stored_node(obj),
                "c": self.descend(path, ((v, path + k) for k, v in obj.children.items())),
            }
        children, treedef = jtu.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)
        node_data = treedef.node_data()  # type: ignore[attr-defined]  # (not in jaxlib's stubs)
        if node_data is None:  # JAX sees a leaf: it must be a static value (function, class, ...)
            return {"t": Tag.VALUE, "v": _static.encode(obj, path, self.level + 1), "p": path}
        cls, aux = node_data
        if _registry.sets_wrapper_fields(cls, aux):
            raise UnserialisableError(
                f"{at(path)}: a {cls.__qualname__} that wraps a function (its __name__, "
                "__module__, ... set by eqx.module_update_wrapper): eqx_msg never loads those "
                "fields from a file; save the Module it wraps"
            )
        keys = [jtu.keystr(key) for key, _ in children]
        node: dict[str, Any] = {"t": Tag.NODE, "cls": _registry.name_of(cls, path)}
        by_name = _modules.static_fields(cls, aux)
        if by_name is None:
            node["aux"] = _static.encode(
                aux, f"{at(path)} (flatten data of {cls.__qualname__})", self.level + 1
            )
        else:  # a Module: its static fields by name
            node["static"] = {
                name: _static.encode(value, path + field_key(name), self.level + 2)
                for name, value in by_name.items()
            }
        return {
            **node,
            "keys": keys,
            "c": self.descend(
                path, ((child, path + key) for key, (_, child) in zip(keys, children))
            ),
        }

    def leaf(self, obj: Any, path: str) -> int:
        record = leaf_record(obj, path)
        self.records.append(record)
        self.sources.append(obj)
        return len(self.records) - 1


_ARRAY_LEAVES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, pydantic.BaseModel)


def _holds_arrays(value: Any) -> bool:
    """Whether a pydantic model's field is stored as a child (it holds arrays or models)."""
    if isinstance(value, _ARRAY_LEAVES):
        return True
    is_model = lambda x: isinstance(x, pydantic.BaseModel)  # noqa: E731
    return any(isinstance(x, _ARRAY_LEAVES) for x in jtu.tree_leaves(value, is_leaf=is_model))


def leaf_record(obj: Any, path: str) -> LeafRecord:
    """The header record of an array leaf, without `offset`/`nbytes` (the writer adds them)."""
    if isinstance(obj, np.ndarray):
        if isinstance(obj, np.ma.MaskedArray):
            raise UnserialisableError(
                f"{at(path)}: a numpy masked array would lose its mask; "
                "store .data and .mask (numpy.ma.getmaskarray) as two leaves"
            )
        return {
            "path": path,
            "kind": Kind.NUMPY,
            "dtype": _dtype(obj.dtype, path),
            "shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {
            "path": path,
            "kind": Kind.NUMPY_SCALAR,
            "dtype": _dtype(obj.dtype, path),
            "shape": [],
        }
    if isinstance(obj, jax.ShapeDtypeStruct):
        record: LeafRecord
        if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            impl = obj.dtype._impl
            key_shape = [*obj.shape, *impl.key_shape]
            record = {"path": path, "kind": Kind.ABSTRACT, "dtype": "uint32", "shape": key_shape}
            record["key_impl"] = impl.name
        else:
            dtype_name, shape = _dtype(obj.dtype, path), list(obj.shape)
            record = {"path": path, "kind": Kind.ABSTRACT, "dtype": dtype_name, "shape": shape}
        if obj.weak_type:
            record["weak_type"] = True
        sharding = _place.sharding_record(obj)  # (a ShapeDtypeStruct may carry one)
        if sharding is not None:
            record["sharding"] = sharding
        return record
    if isinstance(obj, jax.core.Tracer):
        raise UnserialisableError(
            f"{at(path)}: a traced array (inside jit/vmap/grad) cannot be saved; "
            "save outside the transformation"
        )
    dtype = obj.dtype
    # A plain dtype first: issubdtype costs ~1 us a leaf, and only key arrays have key dtypes.
    if not isinstance(dtype, np.dtype) and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        impl = dtype._impl
        record = {
            "path": path,
            "kind": Kind.KEY,
            "dtype": "uint32",
            "shape": [*obj.shape, *impl.key_shape],
            "key_impl": impl.name,
        }
    else:
        record = {
            "path": path,
            "kind": Kind.JAX,
            "dtype": _dtype(dtype, path),
            "shape": list(obj.shape),
        }
        if obj.weak_type:
            record["weak_type"] = True
    sharding = _place.sharding_record(obj)
    if sharding is not None:
        record["sharding"] = sharding
    return record


def _dtype(dtype: Any, path: str) -> str:
    name = _dtypes.name_cache.get(dtype)
    if name is not None:
        return name
    try:
        return _dtypes.name_of(dtype if isinstance(dtype, np.dtype) else np.dtype(dtype))
    except DTypeError as err:
        raise UnserialisableError(f"{at(path)}: {err}") from None


def unflatten(node: Any, leaves: Sequence[Any], allow: Mapping[str, Any]) -> Any:
    """Rebuild the pytree of a header tree node, with `leaves[i]` at each array leaf `i`.

    The tree is from a header the Rust core has checked against the structural rules of FORMAT.md
    section 4 (known tags, each tag's keys present and typed, `k`, `keys` and `c` of one length,
    every leaf record referenced exactly once), so its nodes are read without checks. What is
    checked here is what building values means: static values, registry names, dict keys that are
    distinct once decoded, and classes that match the file's children.
    """
    return _Builder(leaves, allow).child(node, "")


class _Builder:
    def __init__(self, leaves: Sequence[Any], allow: Mapping[str, Any]):
        self.leaves = leaves
        self.allow = allow

    def child(self, node: Any, where: Where) -> Any:
        if type(node) is int:  # an array leaf: an index into the leaf records
            return self.leaves[node]
        return self.build(node, where)

    def children(
        self, nodes: list[Any], where: Where, key: Callable[[int], str] = index_key
    ) -> list[Any]:
        """A node's children; child `i` is at key path `where + key(i)` (called only for errors)."""
        leaves, build = self.leaves, self.build
        return [
            leaves[node] if type(node) is int else build(node, KeyPath(where, key, i))
            for i, node in enumerate(nodes)
        ]

    def build(self, node: dict[str, Any], where: Where) -> Any:
        tag = node["t"]
        if tag == Tag.DICT:
            return self.mapping(node, where, dict)
        if tag == Tag.LIST:
            return self.children(node["c"], where)
        if tag == Tag.TUPLE:
            return tuple(self.children(node["c"], where))
        if tag == Tag.NONE:
            return None
        if tag == Tag.VALUE:
            return _static.decode(node["v"], self.allow, where)
        if tag == Tag.NODE:
            return self.custom(node, where)
        if tag == Tag.ORDEREDDICT:
            return self.mapping(node, where, collections.OrderedDict)
        if tag == Tag.MODEL:
            return self.pydantic_model(node, where)
        if tag == Tag.DEFAULTDICT:
            factory = _static.decode(node["factory"], self.allow, where)
            if not (factory is None or _registry.is_builtin_class(factory)):
                raise HeaderError(  # it runs whenever the loaded dict misses a key
                    f"{at(where)}: a defaultdict's factory must be a builtin class (list, "
                    f"int, dict, ...) or None, not {factory!r:.60}"
                )
            return self.mapping(node, where, functools.partial(collections.defaultdict, factory))
        return self.namedtuple(node, where)  # (the core knows no other tag)

    def mapping(self, node: dict[str, Any], where: Where, make: Callable[[Any], _M]) -> _M:
        """A dict-like node from `make(pairs)`; a repeated key (its leaves would vanish) is refused."""
        keys = [_static.decode(key, self.allow, where) for key in node["k"]]
        children = self.children(node["c"], where, lambda i: dict_key(keys[i]))
        try:
            mapping = make(zip(_static.spread(keys, where), children))
        except TypeError:  # a key that decodes to an unhashable value ($list, $dict, ...)
            bad = next((k for k in keys if not _hashable(k)), None)
            raise HeaderError(
                f"{at(where)}: a {node['t']} key must be hashable, not {bad!r:.60}"
            ) from None
        if len(mapping) != len(keys):
            raise HeaderError(
                f"{at(where)}: a {node['t']} node repeats a key "
                f"({len(keys)} keys, {len(mapping)} distinct)"
            )
        return mapping

    def pydantic_model(self, node: dict[str, Any], where: Where) -> Any:
        """A pydantic model, rebuilt through its own validation (its validators run). Where the
        tree is abstract (ShapeDtypeStructs in place of arrays: `abstract()`, `filter=`) and
        validation refuses them, it is constructed without validation instead."""
        cls = _registry.resolve(node["cls"], self.allow, where)
        static = {k: _static.decode(v, self.allow, where) for k, v in node["static"].items()}
        if isinstance(cls, _generic.UnknownName):  # (unknown="generic")
            return self.generic(node, static, where)
        if not (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)):
            raise HeaderError(f"{at(where)}: {node['cls']!r} is not a pydantic model class")
        keys = node["keys"]
        if not all(k.startswith(".") for k in keys):
            raise HeaderError(
                f"{at(where)}: a model node's keys are .field names, not {keys!r:.60}"
            )
        children = self.children(node["c"], where, functools.partial(_saved_key, node))
        data = {**static, **{k[1:]: child for k, child in zip(keys, children)}}
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as err:
            abstract = any(
                isinstance(x, jax.ShapeDtypeStruct)
                for x in jtu.tree_leaves(
                    children, is_leaf=lambda x: isinstance(x, pydantic.BaseModel)
                )
            )
            if abstract:
                return cls.model_construct(**data)
            raise StructureMismatchError(
                f"{at(where)}: the file's {node['cls']} does not validate as the class is now: "
                f"{err}. {_CHANGED}"
            ) from None

    def namedtuple(self, node: dict[str, Any], where: Where) -> Any:
        cls = _registry.resolve(node["cls"], self.allow, where)
        if isinstance(cls, _generic.UnknownName):  # (unknown="generic")
            return self.generic(node, None, where)
        if not (
            isinstance(cls, type)
            and issubclass(cls, tuple)
            and isinstance(getattr(cls, "_fields", None), tuple)
        ):  # (builtins.tuple would iterate its one child: an (N, 0) leaf holds N rows)
            raise HeaderError(f"{at(where)}: {node['cls']!r} is not a namedtuple class")
        fields = list(getattr(cls, "_fields", ()))
        _check_keys(node, node.get("keys"), fields, where)
        if len(node["c"]) != len(fields):  # (a file written before namedtuples had keys)
            raise StructureMismatchError(
                f"{at(where)}: the file's {node['cls']} has {len(node['c'])} children, but "
                f"the class now has the {len(fields)} fields {fields}. {_CHANGED}"
            )
        return cls(*self.children(node["c"], where, functools.partial(_field_key, fields)))

    def custom(self, node: dict[str, Any], where: Where) -> Any:
        cls = _registry.resolve(node["cls"], self.allow, where)
        if isinstance(cls, _generic.UnknownName):  # (unknown="generic")
            stored = node.get("static")
            if stored is None:
                static = _static.decode(node["aux"], self.allow, where)
            else:
                static = {k: _static.decode(v, self.allow, where) for k, v in stored.items()}
            return self.generic(node, static, where)
        if cls in _BUILTIN_NODES or (
            isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")
        ):
            # jaxlib rebuilds these in C++ from the aux data without checking it against the
            # children (a dict with fewer keys than children crashed the process).
            raise HeaderError(
                f"{at(where)}: a 'node' of class {node['cls']}: builtin containers and "
                "namedtuples have node types of their own (FORMAT.md section 4)"
            )
        aux = self.flatten_data(cls, node, where)
        children = self.children(node["c"], where, functools.partial(_saved_key, node))
        if cls is jtu.Partial:
            if not (
                len(children) == 2 and type(children[0]) is tuple and type(children[1]) is dict
            ):
                raise HeaderError(  # its unflatten calls func(*args, **keywords): an (N, 0) leaf
                    f"{at(where)}: a jax.tree_util.Partial node has two children, a tuple of "
                    "arguments and a dict of keywords"
                )
            _static.values_only(aux, [*children[0], *children[1].values()], where, HeaderError)
        if _registry.sets_wrapper_fields(cls, aux):
            raise HeaderError(
                f"{at(where)}: the file sets the wrapper fields (__module__, __name__, "
                f"__qualname__, __doc__, __annotations__) of a {node['cls']}: eqx_msg never lets a "
                "file choose what a loaded Module says it is"
            )
        try:
            treedef = jtu.PyTreeDef.from_node_data_and_children(
                default_registry, (cls, aux), [_LEAF_TREEDEF] * len(children)
            )
            obj = treedef.unflatten(children)
        except Exception as err:  # whatever the class's own unflatten raises on data it never made
            saved = node.get("keys")
            raise StructureMismatchError(
                f"{at(where)}: cannot rebuild a {node['cls']} from the file's "
                f"{len(children)} children{f' {saved}' if saved is not None else ''} and flatten "
                f"data: {type(err).__name__}: {err}. {_CHANGED}"
            ) from None
        if node.get("keys") is not None:
            _check_keys(node, node["keys"], _child_keys(cls, obj), where)
        return obj

    def generic(self, node: dict[str, Any], static: Any, where: Where) -> _generic.GenericNode:
        """A node of a class the registry does not trust, loaded with unknown="generic"."""
        children = self.children(node["c"], where, functools.partial(_saved_key, node))
        return _generic.generic(node, children, static, where)

    def flatten_data(self, cls: Any, node: dict[str, Any], where: Where) -> Any:
        """A `node`'s flatten data: its `aux`, or that of a Module's `static` fields by name."""
        stored = node.get("static")  # (the core checked: a map of str, or else an `aux`)
        if stored is None:
            return _static.decode(node["aux"], self.allow, where)
        return _modules.flatten_data(
            cls, stored, lambda value: _static.decode(value, self.allow, where), node["cls"], where
        )


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _field_key(fields: list[str], i: int) -> str:
    """The key string of a namedtuple's field `i`."""
    return field_key(fields[i])


def _saved_key(node: dict[str, Any], i: int) -> str:
    """The key string of child `i` of a `node` as the file records it, else `[i]`."""
    saved = node.get("keys")
    return saved[i] if saved is not None else index_key(i)


def _child_keys(cls: type, obj: Any) -> list[str]:
    """The key strings of `obj`'s children as JAX flattens it now (per class for a Module)."""
    keys = _MODULE_KEYS.get(cls)
    if keys is None:
        flat = jtu.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)[0]
        keys = [jtu.keystr(key) for key, _ in flat]
        if issubclass(cls, eqx.Module):  # its fields are fixed when the class is made
            _MODULE_KEYS[cls] = keys
    return keys


_MODULE_KEYS: dict[type, list[str]] = {}  # Module class -> its children's key strings

_CHANGED = (
    "The class has changed since the file was written; load with like=<an instance of the class "
    "as it is now> to match leaves by key path instead."
)


def _check_keys(
    node: dict[str, Any], saved: list[str] | None, now: list[str], where: Where
) -> None:
    """Refuse a node whose saved child keys (None: not recorded) differ from its class's now."""
    if saved is None or saved == now:
        return
    raise StructureMismatchError(
        f"{at(where)}: the file's {node['cls']} has children {saved}, but the class "
        f"now has {now}. {_CHANGED}"
    )


def walk(
    root: Any, enter: Callable[[str], bool] | None = None
) -> Iterator[tuple[str | None, Any, list[str] | None]]:
    """Every node of a header tree, depth-first in stored order: `(path, node, keys)`, where
    `path` is its key path and `keys` its children's keys (`child_keys`).

    The one walk of a header tree from the root down (`filter=`'s paths, `like=`'s values): the
    builder, which makes values bottom up, reads children with the same keys. Below a node whose
    children's keys the file does not say (`keys` None), paths are None: such children are still
    visited when `enter` is None, and never when it is given; else a child is visited only if
    `enter(its path)`, so a walk toward a few paths costs no more than those paths.
    """
    stack: list[tuple[Any, str | None]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if type(node) is int:  # an array leaf
            yield path, node, []
            continue
        keys = None if path is None else child_keys(node, path)
        yield path, node, keys
        children = node["c"] if node["t"] in _CONTAINERS else ()
        if path is None or keys is None:
            if enter is None:
                stack.extend((child, None) for child in reversed(children))
            continue
        for key, child in zip(reversed(keys), reversed(children)):
            if enter is None or enter(path + key):
                stack.append((child, path + key))


def subtree_paths(node: Any, wanted: Iterable[str]) -> tuple[set[str], list[str]]:
    """Which `wanted` key paths are paths of nodes of a header tree (containers and leaves), and the
    paths of nodes on the way to them whose children's keys the file does not record (written before
    nodes had `keys`) or whose dict keys do not decode without the registry: those are not
    descended into.

    Only nodes whose path starts some wanted path are visited, and only their paths are made: no
    path is kept per node of the file, so the cost is bounded by the file's size times the longest
    wanted path.
    """
    ordered = sorted(set(wanted))
    if not ordered:
        return set(), []

    def leads_somewhere(path: str) -> bool:  # a prefix of a wanted path (the next one in order)
        i = bisect.bisect_left(ordered, path)
        return i < len(ordered) and ordered[i].startswith(path)

    targets = set(ordered)
    known: set[str] = set()
    opaque: list[str] = []
    for path, _, keys in walk(node, leads_somewhere):
        assert path is not None  # (walked with `enter`: only paths the file says)
        if path in targets:
            known.add(path)
        if keys is None:
            opaque.append(path)
    return known, opaque


def static_differences(treedef: Any, node: Any) -> list[str]:
    """Where a header tree's `node` nodes hold other flatten data than `treedef` (like='s) does.

    The two are walked together, so each node is compared with the one at the same key path.
    A subtree that does not correspond node for node (another class, a class with changed
    fields: like= matched its leaves by key path), or whose node records no `keys`, is not
    compared.
    """
    differ: list[str] = []
    class_names: dict[type, str | None] = {}
    stack: list[tuple[Any, Any, str]] = [(treedef, node, "")]
    while stack:
        treedef, node, path = stack.pop()
        data = treedef.node_data()
        if data is None or type(node) is int or node["t"] not in _CONTAINERS:
            continue  # a leaf on either side (or a node without children: none, value)
        cls, aux = data
        tag, stored, children = node["t"], node["c"], treedef.children()
        if len(children) != len(stored):
            continue
        if tag in (Tag.NODE, Tag.NAMEDTUPLE):
            if cls not in class_names:
                class_names[cls] = _stored_class(cls)
            keys = child_keys(node, path)
            if class_names[cls] != node.get("cls") or keys is None:
                continue
            if tag == Tag.NODE and _node_differs(cls, aux, node):
                differ.append(f"{at(path)} ({node.get('cls')})")
            pairs = list(zip(children, stored, (path + key for key in keys)))
        elif SEQUENCES.get(tag) is cls:
            pairs = list(zip(children, stored, (path + index_key(i) for i in range(len(stored)))))
        elif MAPPINGS.get(tag) is cls and not all(map(_is_leaf, children)):
            try:  # like='s children are in its own key order; the file's in insertion order
                by_key = {_static.decode(k, {}, path): c for k, c in zip(node["k"], stored)}
                order = aux[1] if cls is collections.defaultdict else aux
                pairs = [(t, by_key[k], path + dict_key(k)) for t, k in zip(children, order)]
            except (HeaderError, UnknownTypeError, TypeError, KeyError):
                continue
        else:
            continue
        stack.extend(pair for pair in pairs if not _is_leaf(pair[0]))
    return sorted(differ)


def _is_leaf(treedef: Any) -> bool:
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _stored_class(cls: type) -> str | None:
    """The name a class is stored under, or None if it has none."""
    try:
        return _registry.name_of(cls, "")
    except UnserialisableError:
        return None


def _node_differs(cls: type, aux: Any, node: dict[str, Any]) -> bool:
    """Whether flatten data `aux` of `cls` differs from what the file's `node` stores: its `aux`,
    or its `static` fields by name (compared field by field, in any order)."""
    stored = node.get("static")
    if stored is None:
        return _differs(aux, node.get("aux"))
    mine = _modules.static_fields(cls, aux)
    if mine is None:
        return False  # (not comparable)
    return set(mine) != set(stored) or any(_differs(mine[n], stored[n]) for n in mine)


def _differs(aux: Any, stored: Any) -> bool:
    """Whether flatten data `aux`, encoded, differs from the file's: compared as msgpack bytes (so
    NaN equals NaN and 1.0 differs from np.float32(1.0)), dicts in any key order. False if `aux`
    cannot be stored."""
    try:
        mine = _static.encode(aux, "", level=3)  # (a root node's aux level: only compared)
        return _static.canonical(mine) != _static.canonical(stored)
    except (EqxMsgError, ValueError, TypeError, OverflowError):  # (a str that is not UTF-8)
        return False


def value_paths(root: Any) -> Iterator[tuple[str, Any]]:
    """Every `value` node (a non-array leaf) of a header tree: its key path (as the node stores it)
    and encoded value."""
    for _, node, _ in walk(root):
        if type(node) is not int and node["t"] == Tag.VALUE:
            yield node.get("p") or "", node["v"]  # (a nil `p` counts as absent)
