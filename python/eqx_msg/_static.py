"""Static values: Python objects stored inline in the header (FORMAT.md section 6).

Dict keys, Module static fields, flatten aux data and non-array leaves (numbers, strings, functions,
classes, dtypes) are encoded here, recursively, into plain msgpack values; tagged maps (`{"$": ...}`)
carry what msgpack has no type for. Classes and functions are stored by name and resolved through the
registry when decoding.
"""

from __future__ import annotations

import collections
import contextvars
import enum
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from . import _core, _dtypes, _generic, _registry
from ._errors import (
    DTypeError,
    EqxMsgError,
    HeaderError,
    LimitError,
    StructureMismatchError,
    UnserialisableError,
    Where,
    at,
)

_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1

# What `encode` does with a function it cannot store by name (a lambda, a closure, a jit wrapper):
# "error" (UnserialisableError), or "placeholder" (save(..., unstorable="placeholder")).
UNSTORABLE: contextvars.ContextVar[str] = contextvars.ContextVar("unstorable", default="error")


def is_placeholder(encoded: Any) -> bool:
    """Whether an encoded static value is a placeholder for a function that was not stored."""
    return isinstance(encoded, dict) and encoded.get("$") == "placeholder"


def _describe(func: Any) -> str:
    """What a placeholder says it stands for: the function's name and where it was defined."""
    code = getattr(func, "__code__", None)
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{name} ({code.co_filename}:{code.co_firstlineno})" if code is not None else name


def encode(value: Any, where: str, level: int) -> Any:
    """Encode a static value as plain msgpack data; `where` names its place for error messages.

    `level` is the header nesting level the value sits at (the header map is level 1, FORMAT.md
    section 2): an array or map past the header's limit raises `LimitError`.
    """
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float or kind is bytes:
        return value
    if kind is int and _I64_MIN <= value <= _U64_MAX:
        return value
    _room(level, where)  # everything else is an array or a tagged map
    if kind is int:
        return {"$": "int", "v": str(value)}
    if kind is tuple:
        return [encode(v, where, level + 1) for v in value]
    named = _registry.user_name(value)
    if named is not None:
        return {"$": "ref", "v": named}
    if isinstance(value, enum.Enum):
        if kind.__members__.get(value.name) is not value:  # (a combination of Flag members)
            raise UnserialisableError(
                f"{at(where)}: cannot store {value!r}: enum values are stored by member "
                "name, and this is no single member; store its .value"
            )
        return {"$": "enum", "cls": _registry.name_of(kind, where), "v": value.name}
    if isinstance(value, np.generic):
        _room(level + 1, where)
        return {**_encode_small_array(np.asarray(value), where), "$": "numpy_scalar"}
    # The tagged maps below hold their items in an array one level down.
    if kind is list:
        _room(level + 1, where)
        return {"$": "list", "v": [encode(v, where, level + 2) for v in value]}
    if kind is dict:
        _room(level + 1, where)
        return {
            "$": "dict",
            "k": [encode(k, where, level + 2) for k in value],
            "v": [encode(v, where, level + 2) for v in value.values()],
        }
    if kind is set or kind is frozenset:
        _room(level + 1, where)
        items = [encode(v, where, level + 2) for v in value]
        try:  # not in hash order: the same set gives the same bytes in every process
            items.sort(key=_packed)
        except (ValueError, TypeError) as err:  # (a str that is not UTF-8)
            raise UnserialisableError(f"{at(where)}: cannot store a set item: {err}") from None
        return {"$": kind.__name__, "v": items}
    if kind is complex:
        _room(level + 1, where)
        return {"$": "complex", "v": [value.real, value.imag]}
    if isinstance(value, np.dtype):
        return {"$": "dtype", "v": _dtype_name(value, where)}
    if kind is functools.partial:
        encoded = {  # "args" is an array one level down, beside "f", whose encoding checks that level
            "$": "partial",
            "f": encode(value.func, where, level + 1),
            "args": [encode(a, where, level + 2) for a in value.args],
            "kw": encode(dict(value.keywords), where, level + 1),
        }
        values_only(value.func, [*value.args, *value.keywords.values()], where, UnserialisableError)
        return encoded
    if kind is np.ndarray:
        _room(level + 1, where)
        return _encode_small_array(value, where)
    if isinstance(value, type) or callable(value):
        try:
            return {"$": "ref", "v": _registry.name_of(value, where)}
        except UnserialisableError:
            if UNSTORABLE.get() != "placeholder" or isinstance(value, type):
                raise
            return {"$": "placeholder", "v": _describe(value)}
    if kind in _PLACEHOLDERS and getattr(value, "__dict__", None) == {}:
        return {"$": "new", "cls": _registry.name_of(kind, where)}
    hint = (
        " A bare object() is an identity marker, such as an eqx.nn.StateIndex's before the model "
        "goes through eqx.nn.make_with_state (which replaces it with a string): save after that."
        if kind is object
        else ""
    )
    raise UnserialisableError(
        f"{at(where)}: cannot store a value of type {kind.__module__}.{kind.__qualname__} "
        f"({value!r:.80}). Static values may be None, bool, int, float, complex, str, bytes, numpy "
        "scalars and dtypes, tuples, lists, dicts, sets, functools.partial, enum members, and "
        "module-level functions and classes; "
        "a sentinel object can be stored by name after eqx_msg.register(obj, name=...)." + hint
    )


def canonical(encoded: Any) -> bytes:
    """An encoded static value as msgpack bytes that equal values share (dict entries and set items
    in a fixed order), for comparing flatten data."""
    return _packed(_normalised(encoded))


def _normalised(data: Any) -> Any:
    if isinstance(data, list):
        return [_normalised(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {key: _normalised(value) for key, value in data.items()}
    keys, values, tag = out.get("k"), out.get("v"), out.get("$")
    if tag == "dict" and isinstance(keys, list) and isinstance(values, list):
        pairs = sorted(zip(keys, values), key=lambda pair: _packed(pair[0]))
        out["k"], out["v"] = [k for k, _ in pairs], [v for _, v in pairs]
    elif tag in ("set", "frozenset") and isinstance(values, list):
        out["v"] = sorted(values, key=_packed)
    return out


def _packed(encoded: Any) -> bytes:
    """An encoded static value as msgpack bytes (a total order for set items and dict keys)."""
    return msgpack.packb(encoded, use_bin_type=True)


# At most this many keys of one set or mapping a file gives may share a hash: Python finds a key among
# those sharing its hash one by one, so a file of n keys costs at most n * this many comparisons.
# CPython's hash(-1) == hash(-2) (and tuples of them) would otherwise make it cost n * n.
MAX_SHARED_HASH = 32


def spread(keys: Sequence[Any], where: Where, what: str = "keys") -> Sequence[Any]:
    """`keys` (hashable values a file gives) unchanged, once checked to spread over hashes:
    `LimitError` if more than `MAX_SHARED_HASH` share one."""
    if len(keys) > MAX_SHARED_HASH:
        shared = collections.Counter(map(hash, keys)).most_common(1)[0][1]
        if shared > MAX_SHARED_HASH:
            raise LimitError(
                f"{at(where)}: {shared} {what} share one hash value (more than "
                f"{MAX_SHARED_HASH}); such a file would make loading cost the square of its size"
            )
    return keys


def values_only(
    func: Any, arguments: Sequence[Any], where: Where, error: type[EqxMsgError]
) -> None:
    """Refuse (with `error`) a function, class or options dict among the `arguments` a partial of
    `func` binds, at any depth: a file could otherwise hand a trusted function another one to call
    (`jax.jit` with `compiler_options` that dump the arguments to disk). Dtypes are values. Only a
    helper that Equinox layers build that way (`_registry.takes_functions_by_design`) may be given
    functions, themselves from the registry."""
    functions_ok = _registry.takes_functions_by_design(func)
    stack = list(arguments)
    while stack:
        value = stack.pop()
        if isinstance(value, tuple | list | set | frozenset):
            stack.extend(value)
        elif isinstance(value, dict):
            raise error(
                f"{at(where)}: a partial binds a dict {value!r:.60}: only values (numbers, "
                "strings, arrays, dtypes, tuples) may be bound, never options or functions"
            )
        elif callable(value) and not _is_dtype(value) and not functions_ok:
            raise error(
                f"{at(where)}: a partial binds {value!r:.60}, a function or class: only values "
                "(numbers, strings, arrays, dtypes, tuples) may be bound; register a module-level "
                "function of your own that calls it instead"
            )


def _is_dtype(value: Any) -> bool:
    """A scalar type (np.float32, jnp.bfloat16): callable, but a value here."""
    return isinstance(value, type) and (
        issubclass(value, np.generic) or isinstance(getattr(value, "dtype", None), np.dtype)
    )


def _room(level: int, where: Where) -> None:
    """Refuse an array or map at header nesting `level` past the header's limit."""
    if level > _core.MAX_DEPTH:
        raise LimitError(
            f"{at(where)}: a static value nests containers too deep here: an array or "
            f"map at header level {level}, past the header's limit of {_core.MAX_DEPTH} "
            "(FORMAT.md section 2)"
        )


def decode(data: Any, allow: Mapping[str, Any], where: Where) -> Any:
    """Decode a static value written by `encode`, resolving names through the registry and `allow`."""
    if isinstance(data, list):
        return tuple(decode(v, allow, where) for v in data)
    if not isinstance(data, dict):
        return data
    try:
        tag = data["$"]
        if tag == "ref":
            return _registry.resolve(_str(data["v"]), allow, where)  # (unknown="generic": a name)
        if tag == "placeholder":
            raise StructureMismatchError(
                f"{at(where)}: the file holds a placeholder for the function {_str(data['v'])}, "
                "which could not be stored by name (saved with unstorable='placeholder'): load "
                "with like= holding the function there (e.g. the model built as it was saved)"
            )
        if tag == "list":
            return [decode(v, allow, where) for v in data["v"]]
        if tag == "dict":
            keys, values = data["k"], data["v"]
            if len(keys) != len(values):
                raise HeaderError(
                    f"{at(where)}: static dict has {len(keys)} keys, {len(values)} values"
                )
            decoded = spread([decode(k, allow, where) for k in keys], where, "dict keys")
            return dict(zip(decoded, (decode(v, allow, where) for v in values)))
        if tag == "set":
            return set(spread([decode(v, allow, where) for v in data["v"]], where, "set items"))
        if tag == "frozenset":
            items = spread([decode(v, allow, where) for v in data["v"]], where, "set items")
            return frozenset(items)
        if tag == "int":
            return int(_str(data["v"]))
        if tag == "complex":
            real, imag = data["v"]
            return complex(float(real), float(imag))
        if tag == "dtype":
            return _dtypes.to_numpy(_str(data["v"]))
        if tag == "partial":
            func = decode(data["f"], allow, where)
            args = decode(data["args"], allow, where)
            keywords = decode(data["kw"], allow, where)
            named = isinstance(keywords, dict) and all(isinstance(k, str) for k in keywords)
            if not (callable(func) and named):
                raise HeaderError(
                    f"{at(where)}: malformed partial: a function, and keywords by name"
                )
            values_only(func, [*args, *keywords.values()], where, HeaderError)
            return functools.partial(func, *args, **keywords)
        if tag == "ndarray":
            return _decode_small_array(data, where)
        if tag == "numpy_scalar":
            array = _decode_small_array(data, where)
            if array.shape != ():
                raise HeaderError(f"{at(where)}: a numpy_scalar of shape {array.shape}")
            return array[()]
        if tag == "enum":
            cls = _registry.resolve(_str(data["cls"]), allow, where)
            if isinstance(cls, _generic.UnknownName):  # (unknown="generic")
                return _generic.UnknownName(f"{cls.name}.{_str(data['v'])}")
            if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
                raise HeaderError(f"{at(where)}: {data['cls']} is not an Enum class")
            return cls[_str(data["v"])]
        if tag == "new":
            cls = _registry.resolve(_str(data["cls"]), allow, where)
            if cls not in _PLACEHOLDERS:
                raise HeaderError(f"{at(where)}: {data['cls']} is not a placeholder class ($new)")
            return object.__new__(cls)  # no __init__ of its own to skip, no state to restore
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, EqxMsgError):
            raise
        raise HeaderError(f"{at(where)}: malformed static value {data!r:.120}: {err}") from None
    raise HeaderError(f"{at(where)}: unknown static value tag {data.get('$')!r}")


def _placeholders() -> frozenset[type]:
    """Classes whose instances are interchangeable placeholders, stored as `$new` (FORMAT.md 6).

    Equinox's `SharedNode` (where `eqx.nn.Shared` removed a tied node): fresh ones work alike. A
    sentinel compared by identity is not one of these: register it by name instead.
    """
    try:
        from equinox.nn._shared import SharedNode
    except ImportError:  # pragma: no cover - depends on the equinox version
        return frozenset()
    return frozenset({SharedNode})


_PLACEHOLDERS = _placeholders()


def _encode_small_array(value: np.ndarray, where: str) -> dict[str, Any]:
    if value.dtype.name in _dtypes.PACKED_BITS or value.dtype.hasobject:
        raise UnserialisableError(
            f"{at(where)}: a {value.dtype} value cannot be static; store it as a leaf"
        )
    array = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    return {
        "$": "ndarray",
        "dtype": _dtype_name(value.dtype, where),
        "shape": list(value.shape),
        "data": array.tobytes(),
    }


def _dtype_name(dtype: np.dtype, where: str) -> str:
    """The format's name of a dtype in a static value; `UnserialisableError` naming `where`."""
    try:
        return _dtypes.name_of(dtype)
    except DTypeError as err:
        raise UnserialisableError(f"{at(where)}: {err}") from None


def _decode_small_array(data: dict[str, Any], where: Where) -> np.ndarray:
    dtype = _dtypes.to_numpy(_str(data["dtype"])).newbyteorder("<")
    shape, raw = data["shape"], data["data"]
    if (
        not isinstance(shape, list)
        or len(shape) > _core.MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise HeaderError(
            f"{at(where)}: a static ndarray's shape must be at most {_core.MAX_NDIM} "
            f"non-negative integers, not {shape!r:.80}"
        )
    count = 0 if 0 in shape else 1
    for d in shape if count else ():  # stopped once past the bytes there are: no bignum work
        count *= d
        if count * dtype.itemsize > len(raw if isinstance(raw, bytes) else b""):
            break
    if not isinstance(raw, bytes) or count * dtype.itemsize != len(raw):
        raise HeaderError(f"{at(where)}: static ndarray has the wrong number of bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value
