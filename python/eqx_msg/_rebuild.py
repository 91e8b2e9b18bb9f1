"""A pytree rebuilt from a validated file: the leaves `filter=` selects, placed as the load options say,
in the file's structure or `like=`'s."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable
from typing import Any

import jax.tree_util as jtu
import numpy as np

from . import _gc, _generic, _leaves, _place, _registry, _tree
from ._errors import (
    KeyPathError,
    at,
    warn,
)
from ._file import File, decode_tree
from ._like import match_like
from ._options import Load


def rebuild(file: File, load: Load) -> Any:
    """Rebuild the pytree of a validated file with the options of `load`."""
    if load.verify:
        file.verify()
    allowed = _registry.allow_map(load.allow)
    if load.unknown == "generic":
        allowed = _generic.Fallback(allowed)
    paths = file.header.paths
    tree = decode_tree(file.header.tree())
    select = selector(load.filter, lambda wanted: _tree.subtree_paths(tree, wanted))
    if select is None:
        hosts = file.arrays()
    else:  # leaves not selected are not read: no view is even made
        names = paths()
        chosen = [i for i, name in enumerate(names) if select(name)]
        hosts = [None] * len(names)
        for i, host in zip(chosen, file.arrays(chosen)):
            hosts[i] = host
    shardings = None
    if load.sharding is not None:
        records = file.records
        shardings = _place.resolve_shardings(
            load.sharding, records, lambda i: _leaves.abstract_leaf(records[i])
        )
    with _gc.paused():
        leaves = _leaves.build_leaves(
            file.table, hosts, load.device, shardings, paths, load.as_numpy
        )
        if load.like is None:
            out = _tree.unflatten(tree, leaves, allowed)
        else:
            like = skeleton(load.like, file)
            out = match_like(like, tree, paths(), leaves, allowed, load.strict)
    if isinstance(allowed, _generic.Fallback) and allowed.unknown:
        names = sorted(allowed.unknown)
        warn(
            f"the file names {len(names)} classes or functions the registry does not trust "
            f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): loaded as "
            "eqx_msg.GenericNode / eqx_msg.UnknownName (unknown='generic'), nothing imported"
        )
    return out


def skeleton(like: Any, file: File) -> Any:
    """`like=` itself, or what it returns given the file's metadata where it is a function (a
    function, method or partial: a Module, though callable, is the skeleton itself, and so is a
    class standing as a value leaf)."""
    if isinstance(like, types.FunctionType | types.MethodType | functools.partial):
        return like(file.metadata)
    return like


def selector(
    filter: Any, subtrees: Callable[[Iterable[str]], tuple[set[str], list[str]]]
) -> Callable[[str], bool] | None:
    """A key-path predicate from `filter=`: a callable, or a pytree prefix of bools.

    A pytree (an Equinox filter spec too, though a Module may be callable) must hold bools only, at
    key paths of the file's tree (`subtrees(paths)`: which of `paths` are nodes, and the nodes on the
    way whose children are not named): else `KeyPathError`.
    """
    try:
        flat, treedef = jtu.tree_flatten_with_path(filter)
    except (ValueError, TypeError) as err:  # e.g. a dict whose keys JAX cannot sort
        raise KeyPathError(f"filter= is not a pytree JAX can flatten: {err}") from None
    if filter is None or callable(filter) and jtu.treedef_is_leaf(treedef):
        return filter
    prefixes = [(jtu.keystr(p), v) for p, v in flat]
    wrong = [
        f"{at(prefix)}: {value!r}"
        for prefix, value in prefixes
        if not isinstance(value, bool | np.bool_)
    ]
    if wrong:
        raise KeyPathError(
            f"filter= takes a callable on key paths or a pytree of bools; it holds {wrong[:3]}"
        )
    known, opaque = subtrees([prefix for prefix, _ in prefixes])
    unknown = [
        prefix
        for prefix, _ in prefixes
        if prefix not in known and not any(prefix.startswith(o) for o in opaque)
    ]
    if unknown:
        raise KeyPathError(f"filter= names key paths that are not in the file: {unknown[:5]}")

    def select(path: str) -> bool:
        chosen = False
        best = -1
        for prefix, value in prefixes:
            if (path == prefix or path.startswith(prefix) and path[len(prefix)] in "[.") and len(
                prefix
            ) > best:
                chosen, best = value, len(prefix)
        return chosen

    return select
