"""What may be rebuilt from a file: classes, functions and singletons, by name, never by import.

A file names the classes of its nodes and the functions in its static fields. Loading looks those names
up here and nowhere else: nothing is imported because a file names it. The registry is seeded, on first
use, with the public namespaces of jax, numpy, ml_dtypes, equinox and optax and with the classes and
functions defined in the equinox and optax modules already imported; users add their own with
`register` or per call with `allow=`.
"""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import equinox as eqx
import jax

from ._errors import UnknownTypeError, UnserialisableError

T = TypeVar("T")

# Namespaces whose public callables and classes are trusted, walked once on first lookup.
_SEED_NAMESPACES = (
    "jax", "jax.nn", "jax.nn.initializers", "jax.numpy", "jax.numpy.linalg", "jax.numpy.fft",
    "jax.lax", "jax.random", "jax.scipy.special", "jax.tree_util", "jax.sharding", "jax.dtypes",
    "numpy", "ml_dtypes", "equinox", "equinox.nn", "optax", "optax.schedules", "optax.losses",
    "optax.contrib",
)  # fmt: skip
# Packages whose already-imported modules are also walked, private ones included (optax states,
# equinox's private helpers such as the MLP's default identity).
_SEED_PACKAGES = ("equinox", "optax")
# Names that touch files, processes or the interpreter are never seeded, so a file cannot place them in a
# model's static fields (where `functools.partial` could aim them at a path).
_DENIED = re.compile(
    r"load|save|file|txt|memmap|pickle|exec|eval|compile|import|open|system|callback|print|debug"
    r"|spawn|popen|remove|unlink|write|dump|getattr|setattr|globals|locals|breakpoint|input|exit",
    re.IGNORECASE,
)
_BUILTINS = (
    int, float, complex, bool, str, bytes, list, tuple, dict, set, frozenset, slice, type(None), object,
    collections.OrderedDict, collections.defaultdict, collections.deque,
)  # fmt: skip

_by_name: dict[str, Any] = {}  # name -> object: what a file may name
_user_names: dict[int, str] = {}  # id(object) -> name, for `register(..., name=)` and singletons
_seeded = False


def canonical_name(obj: Any) -> str | None:
    """`module.qualname` as the object reports it, or None when it has no stable name."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return f"{module}.{qualname}"


def register(obj: T, name: str | None = None) -> T:
    """Allow `obj` (a class, function or singleton) to be rebuilt from files; usable as a decorator."""
    name = name or canonical_name(obj)
    if name is None:
        raise UnserialisableError(
            f"cannot register {obj!r}: it has no module-level name; pass name='...'"
        )
    _by_name[name] = obj
    _user_names[id(obj)] = name
    return obj


def name_of(obj: Any, where: str) -> str:
    """The name under which `obj` is stored; `UnserialisableError` (naming `where`) if it has none."""
    name = _user_names.get(id(obj)) or canonical_name(obj)
    if name is None and not _seeded:  # a module-level lambda of a trusted package has a seeded name
        _seed()
        name = _user_names.get(id(obj))
    if name is None:
        raise UnserialisableError(
            f"{where or 'the root'}: cannot store {obj!r}: a lambda, or a function or class defined "
            "inside another function, has no name to look up when loading. Define it at module level "
            "(and pass it to eqx_msg.register, or to allow= when loading)."
        )
    return name


def resolve(name: str, allow: Mapping[str, Any], where: str) -> Any:
    """The object registered (or allowed) under `name`; `UnknownTypeError` if there is none."""
    found = allow.get(name, _MISSING)
    if found is _MISSING:
        found = _by_name.get(name, _MISSING)
    if found is _MISSING and not _seeded:
        _seed()
        found = _by_name.get(name, _MISSING)
    if found is _MISSING:
        raise UnknownTypeError(
            f"{where or 'the root'}: the file names {name!r}, which is not in eqx_msg's registry. "
            "Nothing is imported from a file; if you trust it, pass the object in allow=[...] or call "
            "eqx_msg.register(obj) (with name=... if it was registered under another name)."
        )
    return found


def allow_map(allow: Iterable[Any] | Mapping[str, Any]) -> Mapping[str, Any]:
    """Turn `allow=` (objects, or a mapping of names to objects) into a name -> object mapping."""
    if isinstance(allow, Mapping):
        return allow
    out: dict[str, Any] = {}
    for obj in allow:
        name = _user_names.get(id(obj)) or canonical_name(obj)
        if name is None:
            raise UnserialisableError(f"allow=: {obj!r} has no module-level name; use a dict")
        out[name] = obj
    return out


def _seed() -> None:
    """Fill the registry with the trusted namespaces (once, on first need)."""
    global _seeded
    if _seeded:
        return
    _seeded = True
    for obj in _BUILTINS:
        _by_name.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    for namespace in _SEED_NAMESPACES:
        module = sys.modules.get(namespace)
        if module is None:
            try:  # the fixed seed list only, never a name from a file
                module = __import__(namespace, fromlist=["_"])
            except ImportError:
                continue
        _add_module(module, defined_here_only=False)
    for modname, module in list(sys.modules.items()):
        if module is not None and modname.split(".")[0] in _SEED_PACKAGES:
            _add_module(module, defined_here_only=True)


def _add_module(module: Any, defined_here_only: bool) -> None:
    for attr, obj in list(vars(module).items()):
        if attr.startswith("__") or not (isinstance(obj, type) or callable(obj)):
            continue
        name = canonical_name(obj)
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if name is None and defined_here and getattr(obj, "__name__", None) == "<lambda>":
            name = f"{module.__name__}.{attr}"  # e.g. the MLP's default `_identity = lambda x: x`
            _user_names.setdefault(id(obj), name)
        if name is None or not name.startswith(_TRUSTED) or _DENIED.search(name):
            continue
        if defined_here_only and not defined_here:
            continue
        _by_name.setdefault(name, obj)


def _add_singletons() -> None:
    """Objects compared by identity inside Equinox's flatten data, stored by name."""
    missing = jax.tree_util.tree_structure(eqx.nn.Identity()).node_data()[1][0]
    name = "equinox._module._flatten.MISSING"
    _by_name.setdefault(name, missing)
    _user_names.setdefault(id(missing), name)


def singleton_name(obj: Any) -> str | None:
    """The stored name of a registered singleton or explicitly named object, else None."""
    return _user_names.get(id(obj))


_TRUSTED = tuple(f"{p}." for p in ("jax", "jaxlib", "numpy", "ml_dtypes", "equinox", "optax")) + (
    "builtins.",
    "collections.",
)
_MISSING = object()

__all__ = ["allow_map", "canonical_name", "name_of", "register", "resolve", "singleton_name"]

_add_singletons()
