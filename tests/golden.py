"""The tree that the golden files in tests/fixtures/ hold, and the writer of a new golden file.

Every value is computed, never drawn at random, so the tree is the same on every machine and every
version of the libraries. A golden file is written once and then never rewritten: the files in
tests/fixtures/ are what users' checkpoints of each writer generation look like, and each must load
forever. To add one (after a deliberate change to what the writer emits):

    python tests/golden.py tests/fixtures/v1_<what changed>.eqx

`v1_every_dtype.eqx` is the other kind of golden file: one numpy leaf of each name in the format's
dtype table (FORMAT.md section 5), built by `every_dtype()`. When the table gains a name, add a new
`v1_every_dtype_<n>.eqx` with `python tests/golden.py --every-dtype PATH` and keep the old one.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax

import eqx_msg

METADATA = {"step": 1200, "lr": 0.0003, "tags": ["golden", "v1"], "blob": b"\x00\x01\xff"}


class Pair(NamedTuple):
    """A user namedtuple, registered under a fixed name."""

    first: Any
    second: Any


class Block(eqx.Module):
    """A user Module: a nested layer, an array, a function leaf, None, and static fields."""

    linear: eqx.nn.Linear
    scale: jax.Array
    activation: Callable[[jax.Array], jax.Array]
    dropout: None
    name: str = eqx.field(static=True)
    sizes: tuple[int, ...] = eqx.field(static=True)


eqx_msg.register(Pair, name="eqx_msg.golden.Pair")
eqx_msg.register(Block, name="eqx_msg.golden.Block")


def ramp(shape: tuple[int, ...], dtype: Any, step: float = 0.25) -> np.ndarray:
    """Evenly spaced values in `shape`, cast to `dtype`; integers cycle through -7..7 (0..14 unsigned)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    if dtype == np.bool_:
        return (np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind in "iu" or dtype.name in ("int4", "uint4"):  # (ml_dtypes' int4 has kind "V")
        offset = 7 if dtype.name.startswith("int") else 0
        return (np.arange(count) % 15 - offset).astype(dtype).reshape(shape)
    values = np.arange(count, dtype=np.float64) * step - count * step / 2
    if dtype.kind == "c":
        values = values + 1j * values[::-1]
    return values.astype(dtype).reshape(shape)


NUMPY_DTYPES = ["bool", "int8", "uint16", "int32", "uint64", "float16", "float32", "float64",
                "bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4", "complex64",
                "complex128"]  # fmt: skip
JAX_DTYPES = ["bool", "int8", "int32", "float16", "float32", "bfloat16", "float8_e4m3fn", "int4",
              "complex64"]  # fmt: skip


def tree() -> dict[str, Any]:
    """The golden tree: a Module, an optax state, every kind of leaf and container."""
    linear = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    linear = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        linear,
        (jnp.asarray(ramp((2, 3), np.float32)), jnp.asarray(ramp((2,), np.float32))),
    )
    block = Block(linear, jnp.asarray(ramp((4,), np.float32)), jax.nn.relu, None, "b0", (3, 2))
    params = {"w": jnp.asarray(ramp((2, 2), np.float32))}
    return {
        "model": block,
        "opt": optax.adam(1e-3).init(params),
        "numpy": {name: ramp((3, 5), getattr(ml_dtypes, name, name)) for name in NUMPY_DTYPES},
        "jax": {
            name: jnp.asarray(ramp((2, 4), getattr(ml_dtypes, name, name))) for name in JAX_DTYPES
        },
        "key": jax.random.key(7),
        "weak": jnp.asarray(2.0),
        "abstract": jax.ShapeDtypeStruct((4, 5), jnp.bfloat16),
        "scalars": [
            1,
            -(2**63),
            2**100,
            1.5,
            True,
            3 + 4j,
            "text",
            b"\x00\xff",
            None,
            np.float32(1.5),
            np.int8(-3),
        ],  # fmt: skip
        "pair": Pair(np.arange(3, dtype=np.int16), (jnp.ones(2, jnp.int32), None)),
        "ordered": collections.OrderedDict([("b", np.ones(1)), ("a", np.zeros(2))]),
        "empty": {"list": [], "dict": {}, "tuple": ()},
    }


# The format's dtype table when v1_every_dtype.eqx was written, in FORMAT.md's order.
EVERY_DTYPE = ["bool", "int8", "uint8", "int16", "uint16", "float16", "bfloat16", "int32", "uint32",
               "float32", "int64", "uint64", "float64", "complex64", "complex128", "float8_e3m4",
               "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
               "float8_e5m2fnuz", "float8_e5m3fnu", "float8_e8m0fnu", "float6_e2m3fn",
               "float6_e3m2fn", "int4", "uint4", "float4_e2m1fn", "int2", "uint2"]  # fmt: skip


def exact_values(count: int, name: str) -> np.ndarray:
    """`count` values that dtype `name` holds exactly, as float64 / int64 / bool, before any cast.

    Integers cycle through -2..1 (0..3 unsigned), which even int2 holds; floats through +-0.5, 1, 2,
    4 (no sign for the unsigned float8 types), which even float4_e2m1fn and float8_e8m0fnu hold.
    """
    k = np.arange(count)
    if name == "bool":
        return k % 3 == 0
    if "int" in name:
        return k % 4 - (0 if name.startswith("u") else 2)
    values = 2.0 ** (k % 4 - 1)
    if not name.endswith("fnu"):  # float8_e5m3fnu, float8_e8m0fnu: unsigned
        values = np.where(k % 2 == 1, -values, values)
    if name.startswith("complex"):
        return values + 1j * values[::-1]
    return values


def every_dtype() -> dict[str, np.ndarray]:
    """One (2, 3) numpy leaf per name of `EVERY_DTYPE`, from `exact_values`.

    Needs an ml_dtypes that has every name: `getattr` raises for one it lacks.
    """
    return {
        name: exact_values(6, name).astype(getattr(ml_dtypes, name, name)).reshape(2, 3)
        for name in EVERY_DTYPE
    }


def main(argv: list[str]) -> int:
    """Write the golden tree (or with `--every-dtype`, `every_dtype()`) to the path in `argv`,
    refusing to overwrite an existing file."""
    *flags, path = argv
    data = (
        eqx_msg.dumps(every_dtype()) if flags == ["--every-dtype"]
        else eqx_msg.dumps(tree(), metadata=METADATA)
    )  # fmt: skip
    with open(path, "xb") as f:  # "x": a golden file is never rewritten
        f.write(data)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
