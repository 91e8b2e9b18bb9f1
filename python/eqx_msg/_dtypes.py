"""Dtypes by name: the format's dtype table seen from numpy, and the packed sub-byte types."""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

from . import _core
from ._errors import DTypeError

# Dtypes stored with fewer than 8 bits per element are packed on disk (FORMAT.md section 5).
PACKED_BITS: dict[str, int] = {
    name: bits for name in _core.dtype_names() if (bits := _core.dtype_bits(name)) < 8
}


@functools.cache
def to_numpy(name: str) -> np.dtype:
    """The numpy dtype for a format dtype name; `DTypeError` for a name outside the table."""
    if name not in _NAMES:
        raise DTypeError(f"unknown dtype {name!r}; the format knows {sorted(_NAMES)}")
    found = getattr(ml_dtypes, name, None)
    if found is not None:
        return np.dtype(found)
    try:
        return np.dtype(name)
    except TypeError:  # a name the format gained after the installed ml_dtypes
        raise DTypeError(
            f"dtype {name} is in the format's table, but the installed ml_dtypes "
            f"{ml_dtypes.__version__} has no such type: upgrade ml_dtypes to read it"
        ) from None


def name_of(dtype: np.dtype) -> str:
    """The format's name for a numpy dtype (byte order dropped); `DTypeError` if it has none."""
    try:
        return name_cache[dtype]
    except KeyError:
        pass
    name = dtype.name  # slow in numpy (computed in Python), hence the cache
    if name not in _NAMES or dtype.hasobject:
        raise DTypeError(f"dtype {dtype} cannot be stored; storable dtypes: {sorted(_NAMES)}")
    name_cache[dtype] = name
    return name


name_cache: dict[np.dtype, str] = {}


_NAMES = frozenset(_core.dtype_names())
