"""Equinox Modules' static fields by name (FORMAT.md section 4, `node` with `static`).

Equinox flattens a Module's static fields into its flatten data by position, after a slot for the
wrapper fields. A file stores them by name instead, so a reader in any language sees
`{"in_features": 8, "use_bias": true}`, and so a class whose static fields were reordered, added or
removed is told apart from the one that wrote the file. The position of each field in the flatten
data is learnt from Equinox itself, once per class, by flattening a bare instance whose static
fields hold markers: nothing here depends on how a given Equinox version lays its data out, only
that it holds each static field's value as an item of a tuple.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.tree_util as jtu

from ._errors import HeaderError, StructureMismatchError, Where, at


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where a Module class's static fields sit in its flatten data."""

    names: tuple[str, ...]  # the static fields, in the class's field order
    template: tuple[Any, ...]  # the flatten data of a bare instance, markers in the fields' places
    places: tuple[int, ...]  # per name, its index in `template`
    name_set: frozenset[str]
    rest: tuple[int, ...]  # the other indices of `template`: what a Module's data must share


@functools.cache
def _layout(cls: type) -> _Layout | None:
    """The layout of `cls`'s flatten data, or None when it does not hold each static field as an
    item of a tuple (a class with its own flatten rule)."""
    try:
        fields = dataclasses.fields(cls)
        probe: Any = object.__new__(cls)
        names = tuple(f.name for f in fields if f.metadata.get("static", False))
        markers = {name: _Marker(name) for name in names}
        for field in fields:
            object.__setattr__(probe, field.name, markers.get(field.name))
        _, treedef = jtu.tree_flatten(probe, is_leaf=lambda x: x is not probe)
        node_data = treedef.node_data()  # type: ignore[attr-defined]  # (not in jaxlib's stubs)
    except Exception:  # noqa: BLE001 - a class that cannot be probed keeps positional flatten data
        return None
    if node_data is None or node_data[0] is not cls or not isinstance(node_data[1], tuple):
        return None
    template = node_data[1]
    places = []
    for name in names:
        found = [i for i, item in enumerate(template) if item is markers[name]]
        if len(found) != 1:
            return None
        places.append(found[0])
    if any(isinstance(item, _Marker) for i, item in enumerate(template) if i not in places):
        return None
    rest = tuple(i for i in range(len(template)) if i not in places)
    return _Layout(names, template, tuple(places), frozenset(names), rest)


def _is_module(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, eqx.Module)


class _Marker:
    """Stands for a static field's value in a probed instance."""

    def __init__(self, name: str):
        self.name = name


def static_fields(cls: Any, aux: Any) -> dict[str, Any] | None:
    """A Module's flatten data `aux` as `{static field name: value}` (class field order), or None
    where it cannot be: not a Module, a class with its own flatten rule, or data that differs from
    the class's layout elsewhere than in the static fields (then the file stores `aux` as it is)."""
    layout = _layout(cls) if _is_module(cls) and isinstance(aux, tuple) else None
    if layout is None or len(aux) != len(layout.template):
        return None
    if any(aux[i] is not layout.template[i] for i in layout.rest):  # (e.g. wrapper fields set)
        return None
    return {name: aux[i] for name, i in zip(layout.names, layout.places)}


def flatten_data(
    cls: Any, stored: dict[Any, Any], decode: Callable[[Any], Any], cls_name: str, where: Where
) -> tuple[Any, ...]:
    """The flatten data that rebuilds a Module of class `cls` (stored as `cls_name`) from its
    static fields by name, `stored` (each value decoded by `decode`); `HeaderError` for a map that
    is not of field names or a class that is not a Module, `StructureMismatchError` if the class's
    static fields now differ from the file's."""
    layout = _layout(cls) if _is_module(cls) else None
    if layout is None:
        what = (
            "flattens its static fields its own way" if _is_module(cls) else "is no Equinox Module"
        )
        raise HeaderError(
            f"{at(where)}: a node of class {cls_name} stores static fields by name, but the class "
            f"{what} (only Equinox Modules have static fields by name)"
        )
    if stored.keys() != layout.name_set:
        if not all(type(name) is str for name in stored):
            raise HeaderError(f"{at(where)}: a node's static is a map of field names to values")
        missing = [n for n in layout.names if n not in stored]
        extra = [n for n in stored if n not in layout.name_set]
        raise StructureMismatchError(
            f"{at(where)}: the file's {cls_name} has static fields {list(stored)}, but the class "
            f"now has {list(layout.names)} (missing from the file: {missing}; not in the class: "
            f"{extra}). The class has changed since the file was written; load with "
            "like=<an instance of the class as it is now> to match leaves by key path instead."
        )
    data = list(layout.template)
    for name, i in zip(layout.names, layout.places):
        data[i] = decode(stored[name])
    return tuple(data)
