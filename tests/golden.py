"""The tree that the golden files in tests/fixtures/ hold, and the writer of a new golden file.

Every value is computed, never drawn at random, so the tree is the same on every machine and every
version of the libraries. A golden file is written once and then never rewritten: the files in
tests/fixtures/ are what users' checkpoints of each writer generation look like, and each must load
forever. To add one (after a deliberate change to what the writer emits):

    python tests/golden.py tests/fixtures/v1_<what changed>.eqx
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


def main(argv: list[str]) -> int:
    """Write the golden tree to the path in `argv`, refusing to overwrite an existing file."""
    (path,) = argv
    with open(path, "xb") as f:  # "x": a golden file is never rewritten
        f.write(eqx_msg.dumps(tree(), metadata=METADATA))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
