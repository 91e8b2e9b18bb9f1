"""Loading without the code (`load(..., unknown="generic")`): a node whose class the registry does
not trust comes back as a `GenericNode` that keeps the class's name, its children by key and its
static fields by name; a function or class a static value names is an `UnknownName`. Nothing the
file names is imported or run, and saving a `GenericNode` writes the node it was read from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax.tree_util as jtu
import msgpack

from . import _registry
from ._errors import UnknownTypeError, Where


class UnknownName:
    """A class or function a file names that the registry does not trust: only its name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<untrusted {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnknownName) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("UnknownName", self.name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnknownTypeError(
            f"{self.name} was loaded with unknown='generic': its code was not loaded, so it "
            "cannot run; register the real object (eqx_msg.register) and load again"
        )


class Fallback(Mapping[str, Any]):
    """An `allow=` mapping under which every name resolves: to what `allow` or the registry gives,
    else to an `UnknownName` (its names are collected in `unknown`)."""

    def __init__(self, allow: Mapping[str, Any]):
        self.allow = allow
        self.unknown: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:
        found = _registry.trusted(name, self.allow)
        if found is _registry.MISSING:
            self.unknown.add(name)
            return UnknownName(name)
        return found

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.allow)

    def __len__(self) -> int:
        return len(self.allow)


class _SavedKey:
    """A child's key as the file wrote it (`.weight`, `[0]`, `['a']`): `jax.tree_util.keystr`
    writes it back unchanged."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return f"SavedKey({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SavedKey) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


class GenericNode:
    """A pytree node of a class eqx_msg does not trust, loaded with `unknown="generic"`.

    `cls_name` is the class's registry name; `children` maps each child's key (as the file wrote
    it: `.weight`, `[0]`) to the child; `static` holds an Equinox Module's static fields by name
    (an `UnknownName` for a function or class the registry does not trust). Fields are readable as
    attributes (`node.weight`, `node.in_features`). It is a JAX pytree with the same key paths as
    the class it stands for, so `jax.tree.map`, `eqx_msg.save` (which writes the node back under
    `cls_name`, with its stored static fields) and `eqx.filter` work on it; it cannot be called.
    """

    def __init__(
        self, cls_name: str, keys: list[str], children: list[Any], static: Any, stored: bytes
    ):
        self.cls_name = cls_name
        self.children = dict(zip(keys, children))
        self.static = static
        self._stored = stored  # the file's node without its children, as msgpack

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        children = self.__dict__.get("children", {})
        if f".{name}" in children:
            return children[f".{name}"]
        static = self.__dict__.get("static")
        if isinstance(static, dict) and name in static:
            return static[name]
        raise AttributeError(f"{self.__dict__.get('cls_name')} (generic) has no field {name!r}")

    def __repr__(self) -> str:
        fields = (
            [f"{k}={v!r}" for k, v in (self.static or {}).items()]
            if isinstance(self.static, dict)
            else []
        )
        fields += [f"{k.lstrip('.')}=..." for k in self.children]
        return f"GenericNode({self.cls_name!r}, {', '.join(fields)})"

    def stored(self) -> dict[str, Any]:
        """The file's node this was read from, without its children (`c`)."""
        return msgpack.unpackb(self._stored, raw=False, strict_map_key=False)


def _flatten(node: GenericNode) -> tuple[list[tuple[_SavedKey, Any]], Any]:
    keys = tuple(node.children)
    aux = (node.cls_name, keys, node._stored, _Static(node.static))
    return [(_SavedKey(k), v) for k, v in node.children.items()], aux


def _unflatten(aux: Any, children: Any) -> GenericNode:
    cls_name, keys, stored, static = aux
    return GenericNode(cls_name, list(keys), list(children), static.value, stored)


class _Static:
    """A node's decoded static fields in its treedef: compared by their encoded form."""

    __slots__ = ("value", "_key")

    def __init__(self, value: Any):
        self.value = value
        self._key = repr(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)


jtu.register_pytree_with_keys(GenericNode, _flatten, _unflatten)


def generic(node: dict[str, Any], children: list[Any], static: Any, where: Where) -> GenericNode:
    """The `GenericNode` of a file's `node` or `namedtuple` node whose class is not trusted."""
    keys = node.get("keys") or [f"[{i}]" for i in range(len(children))]
    if node["t"] == "namedtuple" and node.get("keys"):
        keys = [f".{k}" for k in keys]
    stored = msgpack.packb({k: v for k, v in node.items() if k != "c"}, use_bin_type=True)
    return GenericNode(node["cls"], list(keys), children, static, stored)


def stored_node(node: GenericNode) -> dict[str, Any]:
    """The tree node (without `c`) a `GenericNode` was read from, for writing it back."""
    return node.stored()
