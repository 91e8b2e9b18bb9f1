"""The options of every load (`load`, `loads`, `Reader.load`), spelled out once: their names and
types (`LoadOptions`), defaults and checks (`Load`), and the documentation each entry point shows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, TypeVar

from ._errors import ShardingError


class LoadOptions(TypedDict, total=False):
    """The keyword arguments of `eqx_msg.load`, `eqx_msg.loads` and `Reader.load`."""

    like: Any
    allow: Any
    device: Any
    sharding: Any
    filter: Any
    as_numpy: bool
    verify: bool
    unknown: str
    strict: bool


DOC = """\
- `like`: optional pytree (or `eqx.filter_eval_shape` skeleton) whose structure and static
  fields to use (a warning names the nodes whose static fields differ from the file's); leaves
  are matched by key path, and every missing or extra key path and every shape or dtype mismatch
  is reported in one `StructureMismatchError`. Or a function that takes the file's metadata
  and returns that skeleton (`lambda meta: eqx.filter_eval_shape(make_model, Config(**meta))`):
  the recommended way to load a model whose class has changed since the file was written (the
  hyperparameters saved as metadata build the model as it is now; no weights are made twice).
- `strict`: with `like=`, False takes from the file what matches by key path (shape and dtype
  included) and keeps `like=`'s leaf everywhere else, with one warning listing what was
  skipped; so a params-only half of `eqx.partition` works as `like=` (its `None`s stay `None`).
- `allow`: classes and functions (or a `{name: obj}` mapping) to accept on top of the registry.
- `device`: where jax leaves go (default: JAX's default device). On the CPU they alias the
  file's bytes where those are 64-byte aligned (a map, an aligned copy).
- `sharding`: a `jax.sharding.Sharding` for every jax leaf, a pytree of them matched by key path,
  a callable `(key_path, ShapeDtypeStruct) -> Sharding | None`, or `"saved"` for the layout each
  leaf was saved with. Each device reads only its own slice.
- `filter`: a predicate on key path strings, or a pytree prefix of bools (e.g.
  `{"encoder": True, "decoder": False}`); leaves not selected are not read and come back as
  `jax.ShapeDtypeStruct`.
- `as_numpy`: every array leaf as a read-only numpy array (a view where the bytes are in memory),
  jax leaves included (typed PRNG keys stay jax key arrays: numpy has none); nothing goes to a
  device.
- `unknown`: `"error"` (the default): a class or function the registry does not trust is an
  `UnknownTypeError`. `"generic"`: a node of such a class comes back as an
  `eqx_msg.GenericNode` (its class name, children by key, static fields by name; readable as
  attributes, a pytree with the file's key paths, saved back as the node it was) and such a
  function as an `eqx_msg.UnknownName`, with a warning naming them; nothing is imported or
  run. Enough to inspect, convert or take the weights of a model whose code you do not have.
- `verify`: first check every byte of the file against its checksums (`eqx_msg.verify`), so that
  a damaged file raises `ChecksumError` instead of loading; this reads the whole file. The
  prefix and header are checked on every load."""


@dataclasses.dataclass(frozen=True)
class Load:
    """The options of one load, checked (see `DOC`)."""

    like: Any = None
    allow: Any = ()
    device: Any = None
    sharding: Any = None
    filter: Any = None
    as_numpy: bool = False
    verify: bool = False
    unknown: str = "error"
    strict: bool = True

    @classmethod
    def of(cls, options: Mapping[str, Any], caller: str) -> Load:
        """The checked options of `caller` (its name, for errors) from its keyword arguments."""
        unknown = sorted(set(options) - _NAMES)
        if unknown:
            raise TypeError(
                f"{caller}() got unexpected keyword arguments {unknown}; it takes {sorted(_NAMES)}"
            )
        load = cls(**options)
        if not load.strict and load.like is None:
            raise ValueError("strict=False applies to like=; pass like= as well")
        if load.unknown not in ("error", "generic"):
            raise ValueError(f"unknown={load.unknown!r}: 'error' or 'generic'")
        if load.as_numpy and (load.device is not None or load.sharding is not None):
            raise ShardingError(
                "as_numpy=True keeps arrays on the host: device= and sharding= do not apply"
            )
        return load


_NAMES = frozenset(field.name for field in dataclasses.fields(Load))

_F = TypeVar("_F", bound=Callable[..., Any])


def documented(fn: _F) -> _F:
    """Put `DOC`, indented as the docstring is, where `fn`'s docstring says `{options}`."""
    doc = fn.__doc__ or ""
    line = next(line for line in doc.splitlines() if "{options}" in line)
    indent = line[: len(line) - len(line.lstrip())]
    fn.__doc__ = doc.replace(line, "\n".join(indent + row for row in DOC.splitlines()))
    return fn
