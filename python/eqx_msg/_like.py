"""`like=`: a file's leaves put into another pytree's structure by key path, every mismatch reported
at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from . import _static, _tree
from ._errors import (
    StructureMismatchError,
    warn,
)


def match_like(
    like: Any,
    tree: Any,
    paths: Sequence[str],
    leaves: Sequence[Any],
    allow: Mapping[str, Any],
    strict: bool = True,
) -> Any:
    """Fill `like`'s structure with the file's leaves by key path; report every mismatch at once
    (`strict`), or keep `like`'s leaf wherever the file has none that fits and warn what was
    skipped (not `strict`)."""
    found: dict[str, Any] = dict(zip(paths, leaves))
    values = dict(_tree.value_paths(tree))
    try:
        wanted, treedef = jtu.tree_flatten_with_path(like)
    except (ValueError, TypeError) as err:  # e.g. a dict whose keys JAX cannot sort
        raise StructureMismatchError(f"like= is not a pytree JAX can flatten: {err}") from None
    problems: list[str] = []
    out: list[Any] = []
    for key_path, reference in wanted:
        path = jtu.keystr(key_path)
        if path in found:
            leaf = found.pop(path)
            problem = _compare(reference, leaf)
            if problem:
                problems.append(f"{path}: {problem}")
                leaf = reference
        elif path in values:
            encoded = values.pop(path)  # (a placeholder of a function not stored: like='s)
            leaf = (
                reference
                if _static.is_placeholder(encoded)
                else _static.decode(encoded, allow, path)
            )
        else:
            problems.append(f"{path}: in like= but not in the file")
            leaf = reference
        out.append(leaf)
    problems.extend(f"{path}: in the file but not in like=" for path in [*found, *values])
    if problems and not strict:
        shown = "\n  ".join(problems[:10]) + (
            f"\n  and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        warn(
            f"like= with strict=False: {len(problems)} leaves did not match and were skipped "
            f"(like='s value kept, the file's left out):\n  {shown}"
        )
        problems = []
    if problems:
        raise StructureMismatchError(
            f"the file does not match like= ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
    differ = _tree.static_differences(treedef, tree)
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        warn(
            f"like= and the file differ in the static fields (hyperparameters such as a norm's eps) "
            f"of {shown}; the loaded tree has like='s: load without like= for the file's"
        )
    return jtu.tree_unflatten(treedef, out)


def _compare(reference: Any, leaf: Any) -> str | None:
    """Why `leaf` does not fit where `reference` stands in like=, or None."""
    if not hasattr(reference, "shape") or not hasattr(reference, "dtype"):
        return None
    ref = (
        tuple(reference.shape),
        np.dtype(reference.dtype) if not _is_key(reference) else reference.dtype,
    )
    got = (tuple(leaf.shape), np.dtype(leaf.dtype) if not _is_key(leaf) else leaf.dtype)
    if ref != got:
        return (
            f"like= has shape {ref[0]} dtype {ref[1]}, the file has shape {got[0]} dtype {got[1]}"
        )
    return None


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
