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
from jax._src.tree_util import default_registry

from . import _core, _dtypes, _place, _registry, _static
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


class Flat(NamedTuple):
    """A flattened pytree: the header's tree node, the leaf records, and the leaf objects."""

    tree: dict[str, Any] | int
    records: list[dict[str, Any]]
    sources: list[Any]


def flatten(tree: Any) -> Flat:
    """Flatten `tree` into a tree node, leaf records (no offsets yet) and the array leaves.

    An array leaf's node is the plain integer index of its record (compact for many small leaves).
    """
    records: list[dict[str, Any]] = []
    sources: list[Any] = []
    return Flat(_Flattener(records, sources).walk(tree, ""), records, sources)


class _Flattener:
    def __init__(self, records: list[dict[str, Any]], sources: list[Any]):
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
                {"path": path, "kind": "numpy", "dtype": name, "shape": list(obj.shape)}
            )
            self.sources.append(obj)
            return len(self.sources) - 1
        if kind is _ArrayImpl:
            return self.leaf(obj, path)
        if kind is dict:
            return self.mapping("dict", obj, path)
        if kind is list or kind is tuple:
            name = "list" if kind is list else "tuple"
            return {
                "t": name,
                "c": self.descend(path, ((v, f"{path}[{i}]") for i, v in enumerate(obj))),
            }
        if obj is None:
            return {"t": "none"}
        if kind in _PY_SCALARS:
            return {"t": "value", "v": _static.encode(obj, path, self.level + 1), "p": path}
        if isinstance(obj, jax.Array | jax.ShapeDtypeStruct | np.ndarray | np.generic):
            return self.leaf(obj, path)
        if kind is collections.OrderedDict:
            return self.mapping("ordereddict", obj, path)
        if kind is collections.defaultdict:
            node = self.mapping("defaultdict", obj, path)
            node["factory"] = _static.encode(
                obj.default_factory, f"{path}.default_factory", self.level + 1
            )
            return node
        if isinstance(obj, tuple) and hasattr(kind, "_fields"):
            return {
                "t": "namedtuple",
                "cls": _registry.name_of(kind, path),
                "keys": list(kind._fields),
                "c": self.descend(path, ((v, f"{path}.{f}") for f, v in zip(kind._fields, obj))),
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
            "c": self.descend(path, ((v, f"{path}[{k!r}]") for k, v in obj.items())),
        }

    def custom(self, obj: Any, path: str) -> dict[str, Any]:
        """A node registered with JAX (Module, optax state, ...), or a non-array leaf."""
        children, treedef = jtu.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)
        node_data = treedef.node_data()  # type: ignore[attr-defined]  # (not in jaxlib's stubs)
        if node_data is None:  # JAX sees a leaf: it must be a static value (function, class, ...)
            return {"t": "value", "v": _static.encode(obj, path, self.level + 1), "p": path}
        cls, aux = node_data
        if _registry.sets_wrapper_fields(cls, aux):
            raise UnserialisableError(
                f"{at(path)}: a {cls.__qualname__} that wraps a function (its __name__, "
                "__module__, ... set by eqx.module_update_wrapper): eqx_msg never loads those "
                "fields from a file; save the Module it wraps"
            )
        keys = [jtu.keystr(key) for key, _ in children]
        return {
            "t": "node",
            "cls": _registry.name_of(cls, path),
            "aux": _static.encode(
                aux, f"{at(path)} (flatten data of {cls.__qualname__})", self.level + 1
            ),
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


def leaf_record(obj: Any, path: str) -> dict[str, Any]:
    """The header record of an array leaf, without `offset`/`nbytes` (the writer adds them)."""
    if isinstance(obj, np.ndarray):
        if isinstance(obj, np.ma.MaskedArray):
            raise UnserialisableError(
                f"{at(path)}: a numpy masked array would lose its mask; "
                "store .data and .mask (numpy.ma.getmaskarray) as two leaves"
            )
        return {
            "path": path,
            "kind": "numpy",
            "dtype": _dtype(obj.dtype, path),
            "shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {"path": path, "kind": "numpy_scalar", "dtype": _dtype(obj.dtype, path), "shape": []}
    if isinstance(obj, jax.ShapeDtypeStruct):
        record: dict[str, Any] = {"path": path, "kind": "abstract"}
        if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            impl = obj.dtype._impl
            record.update(dtype="uint32", shape=[*obj.shape, *impl.key_shape], key_impl=impl.name)
        else:
            record.update(dtype=_dtype(obj.dtype, path), shape=list(obj.shape))
        if obj.weak_type:
            record["weak_type"] = True
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
            "kind": "key",
            "dtype": "uint32",
            "shape": [*obj.shape, *impl.key_shape],
            "key_impl": impl.name,
        }
    else:
        record = {
            "path": path,
            "kind": "jax",
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
    """Rebuild the pytree of a header tree node, with `leaves[i]` at each array leaf `i`."""
    builder = _Builder(leaves, allow)
    tree = builder.child(node, "")
    order = builder.order
    if len(order) != len(leaves) or len(set(order)) != len(leaves):
        raise HeaderError(
            f"the tree must reference each of the {len(leaves)} leaf records exactly once; "
            f"it references {len(order)} ({len(set(order))} distinct)"
        )
    return tree


class _Builder:
    def __init__(self, leaves: Sequence[Any], allow: Mapping[str, Any]):
        self.leaves = leaves
        self.allow = allow
        self.order: list[int] = []  # leaf indices met, checked once at the end

    def child(self, node: Any, where: Where) -> Any:
        if type(node) is int:  # an array leaf: an index into the leaf records
            if not 0 <= node < len(self.leaves):
                raise HeaderError(
                    f"{at(where)}: leaf index {node} is out of range: the file has "
                    f"{len(self.leaves)} leaf records"
                )
            self.order.append(node)
            return self.leaves[node]
        return self.build(node, where)

    def children(
        self, nodes: Any, where: Where, key: Callable[[int], str] = lambda i: f"[{i}]"
    ) -> list[Any]:
        """A node's children; child `i` is at key path `where + key(i)` (called only for errors)."""
        leaves, order, count = self.leaves, self.order, len(self.leaves)
        out = []
        for i, node in enumerate(_seq(nodes)):
            if type(node) is int and 0 <= node < count:  # the hot path, inlined
                order.append(node)
                out.append(leaves[node])
            else:
                out.append(self.child(node, KeyPath(where, key, i)))
        return out

    def build(self, node: Any, where: Where) -> Any:
        try:
            tag = node["t"]
            if tag == "dict":
                return self.mapping(node, where, dict)
            if tag == "list":
                return self.children(node["c"], where)
            if tag == "tuple":
                return tuple(self.children(node["c"], where))
            if tag == "none":
                return None
            if tag == "value":
                if type(node.get("p", "")) is not str:
                    raise HeaderError(f"{at(where)}: a value node's key path p is a str")
                return _static.decode(node["v"], self.allow, where)
            if tag == "node":
                return self.custom(node, where)
            if tag == "ordereddict":
                return self.mapping(node, where, collections.OrderedDict)
            if tag == "defaultdict":
                factory = _static.decode(node["factory"], self.allow, where)
                if not (factory is None or _registry.is_builtin_class(factory)):
                    raise HeaderError(  # it runs whenever the loaded dict misses a key
                        f"{at(where)}: a defaultdict's factory must be a builtin class (list, "
                        f"int, dict, ...) or None, not {factory!r:.60}"
                    )
                return self.mapping(
                    node, where, functools.partial(collections.defaultdict, factory)
                )
            if tag == "namedtuple":
                cls = _registry.resolve(node["cls"], self.allow, where)
                if not (
                    isinstance(cls, type)
                    and issubclass(cls, tuple)
                    and isinstance(getattr(cls, "_fields", None), tuple)
                ):  # (builtins.tuple would iterate its one child: an (N, 0) leaf holds N rows)
                    raise HeaderError(f"{at(where)}: {node['cls']!r} is not a namedtuple class")
                fields = list(getattr(cls, "_fields", ()))
                _check_keys(node, fields, where)
                key = functools.partial(_field_key, fields)
                return cls(*self.children(node["c"], where, key))
        except (KeyError, TypeError, AttributeError) as err:
            raise HeaderError(f"{at(where)}: malformed tree node: {err!r}") from None
        raise HeaderError(f"{at(where)}: unknown tree node type {tag!r}")

    def mapping(self, node: dict[str, Any], where: Where, make: Callable[[Any], _M]) -> _M:
        """A dict-like node from `make(pairs)`; a repeated key (its leaves would vanish) is refused."""
        stored, children = _seq(node["k"]), _seq(node["c"])
        if len(stored) != len(children):
            raise HeaderError(f"{at(where)}: {len(stored)} keys but {len(children)} children")
        keys = _static.spread([_static.decode(key, self.allow, where) for key in stored], where)
        mapping = make(zip(keys, self.children(children, where, lambda i: f"[{keys[i]!r}]")))
        if len(mapping) != len(keys):
            raise HeaderError(
                f"{at(where)}: a {node['t']} node repeats a key "
                f"({len(keys)} keys, {len(mapping)} distinct)"
            )
        return mapping

    def custom(self, node: dict[str, Any], where: Where) -> Any:
        cls = _registry.resolve(node["cls"], self.allow, where)
        if cls in _BUILTIN_NODES or (
            isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")
        ):
            # jaxlib rebuilds these in C++ from the aux data without checking it against the
            # children (a dict with fewer keys than children crashed the process).
            raise HeaderError(
                f"{at(where)}: a 'node' of class {node['cls']}: builtin containers and "
                "namedtuples have node types of their own (FORMAT.md section 4)"
            )
        aux = _static.decode(node["aux"], self.allow, where)
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
        if "keys" in node:
            _check_keys(node, _child_keys(cls, obj), where)
        return obj


def _field_key(fields: list[str], i: int) -> str:
    """The key string of a namedtuple's field `i`, else `[i]`."""
    return f".{fields[i]}" if i < len(fields) else f"[{i}]"


def _saved_key(node: dict[str, Any], i: int) -> str:
    """The key string of child `i` of a `node` as the file records it, else `[i]`."""
    saved = node.get("keys")
    key = saved[i] if isinstance(saved, list) and i < len(saved) else None
    return key if isinstance(key, str) else f"[{i}]"


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


def _check_keys(node: dict[str, Any], now: list[str], where: Where) -> None:
    """Refuse a node whose saved child keys differ from what its class has now."""
    saved = node.get("keys")
    if saved is not None and not (type(saved) is list and all(type(k) is str for k in saved)):
        raise HeaderError(f"{at(where)}: a node's keys are an array of str, not {saved!r:.60}")
    if saved is not None and saved != now:
        raise StructureMismatchError(
            f"{at(where)}: the file's {node.get('cls')} has children {saved}, but the class "
            f"now has {now}. {_CHANGED}"
        )


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

    def leads_somewhere(path: str) -> bool:  # a prefix of a wanted path (the next one in order)
        i = bisect.bisect_left(ordered, path)
        return i < len(ordered) and ordered[i].startswith(path)

    targets = set(ordered)
    known: set[str] = set()
    opaque: list[str] = []
    stack: list[tuple[Any, str]] = [(node, "")] if leads_somewhere("") else []
    while stack:
        node, path = stack.pop()
        if path in targets:
            known.add(path)
        if not isinstance(node, dict):
            continue  # an array leaf
        tag, children, keys = node.get("t"), node.get("c", []), node.get("k", [])
        if not isinstance(children, list) or not isinstance(keys, list):
            raise HeaderError(f"{at(path)}: malformed tree node {node!r:.80}")
        named: Iterable[tuple[str, Any]] = ()
        if tag in ("list", "tuple"):
            named = ((f"[{i}]", child) for i, child in enumerate(children))
        elif tag in ("dict", "ordereddict", "defaultdict"):
            try:
                decoded = [_static.decode(key, {}, path) for key in keys]
            except (HeaderError, UnknownTypeError):
                opaque.append(path)
                continue
            named = ((f"[{key!r}]", child) for key, child in zip(decoded, children))
        elif tag in ("namedtuple", "node"):
            names = node.get("keys")
            if not isinstance(names, list) or len(names) != len(children):
                opaque.append(path)
                continue
            dot = "." if tag == "namedtuple" else ""
            named = ((f"{dot}{name}", child) for name, child in zip(names, children))
        for key, child in named:
            child_path = path + key
            if leads_somewhere(child_path):
                stack.append((child, child_path))
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
        if data is None or not isinstance(node, dict) or not isinstance(node.get("c"), list):
            continue  # a leaf on either side
        cls, aux = data
        tag, stored, children = node.get("t"), node["c"], treedef.children()
        if not isinstance(tag, str) or len(children) != len(stored):
            continue
        if tag in ("node", "namedtuple"):
            if cls not in class_names:
                class_names[cls] = _stored_class(cls)
            names = node.get("keys")
            if class_names[cls] != node.get("cls") or not isinstance(names, list):
                continue
            if tag == "node" and _differs(aux, node.get("aux")):
                differ.append(f"{at(path)} ({node.get('cls')})")
            dot = "." if tag == "namedtuple" else ""
            pairs = list(zip(children, stored, (f"{path}{dot}{name}" for name in names)))
        elif tag in ("list", "tuple") and cls is (list if tag == "list" else tuple):
            pairs = list(zip(children, stored, (f"{path}[{i}]" for i in range(len(stored)))))
        elif _MAPPINGS.get(tag) is cls and not all(map(_is_leaf, children)):
            try:  # like='s children are in its own key order; the file's in insertion order
                by_key = {_static.decode(k, {}, path): c for k, c in zip(node["k"], stored)}
                keys = aux[1] if cls is collections.defaultdict else aux
                pairs = [(t, by_key[k], f"{path}[{k!r}]") for t, k in zip(children, keys)]
            except (HeaderError, UnknownTypeError, TypeError, KeyError):
                continue
        else:
            continue
        stack.extend(pair for pair in pairs if not _is_leaf(pair[0]))
    return sorted(differ)


_MAPPINGS: dict[Any, type] = {  # tag -> class
    "dict": dict,
    "ordereddict": collections.OrderedDict,
    "defaultdict": collections.defaultdict,
}


def _is_leaf(treedef: Any) -> bool:
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _stored_class(cls: type) -> str | None:
    """The name a class is stored under, or None if it has none."""
    try:
        return _registry.name_of(cls, "")
    except UnserialisableError:
        return None


def _differs(aux: Any, stored: Any) -> bool:
    """Whether flatten data `aux`, encoded, differs from the file's: compared as msgpack bytes (so
    NaN equals NaN and 1.0 differs from np.float32(1.0)), dicts in any key order. False if `aux`
    cannot be stored."""
    try:
        mine = _static.encode(aux, "", level=3)  # (a root node's aux level: only compared)
        return _static.canonical(mine) != _static.canonical(stored)
    except (EqxMsgError, ValueError, TypeError, OverflowError):  # (a str that is not UTF-8)
        return False


def value_paths(node: Any) -> Iterator[tuple[str, Any]]:
    """Every `value` node (a non-array leaf) of a header tree: its key path and encoded value."""
    stack = [node]
    while stack:
        node = stack.pop()
        if type(node) is int:
            continue
        children = node.get("c", []) if isinstance(node, dict) else None
        if not isinstance(children, list) or (node.get("t") == "value" and "v" not in node):
            raise HeaderError(f"malformed tree node {node!r:.80}")
        if node.get("t") == "value":
            yield str(node.get("p", "")), node["v"]
        stack.extend(children)


def _seq(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected an array, got {type(value).__name__}")
    return value
