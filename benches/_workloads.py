"""The benchmark workloads: deterministic pytrees built from a seed, and what every system needs of them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import ml_dtypes
import numpy as np

SEED = 0
MIB = 1 << 20


class Linear(eqx.Module):
    """A bias-free linear layer."""

    weight: jax.Array


class LayerNorm(eqx.Module):
    """Layer norm parameters with a static epsilon."""

    weight: jax.Array
    bias: jax.Array
    eps: float = eqx.field(static=True, default=1e-5)


class Block(eqx.Module):
    """One transformer block: attention projections and an MLP, each behind a norm."""

    attn_norm: LayerNorm
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    mlp_norm: LayerNorm
    up: Linear
    down: Linear
    activation: Callable[[jax.Array], jax.Array] = eqx.field(static=True, default=jax.nn.gelu)


class Transformer(eqx.Module):
    """Embedding, blocks and a final norm (W1's model)."""

    embed: jax.Array
    blocks: list[Block]
    norm: LayerNorm
    heads: int = eqx.field(static=True, default=8)


class Mixed(eqx.Module):
    """One leaf of each awkward dtype (W3)."""

    f32: jax.Array
    bf16: jax.Array
    fp8: jax.Array
    int4: jax.Array
    int8: jax.Array
    mask: jax.Array
    c64: jax.Array
    scalar: jax.Array
    keys: jax.Array
    name: str = eqx.field(static=True, default="mixed")


MODULES = (Linear, LayerNorm, Block, Transformer, Mixed)


@dataclass
class Workload:
    """A pytree to benchmark and the facts about it the harness and the systems use."""

    name: str
    title: str
    tree: Any
    one_key: str  # the mid-size leaf fetched by "open + fetch one leaf"
    note: str = ""
    numpy_leaves: bool = False
    paths: list[str] = field(init=False)
    leaves: list[Any] = field(init=False)
    treedef: Any = field(init=False)
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        flat, self.treedef = jtu.tree_flatten_with_path(self.tree)
        self.paths = [jtu.keystr(p) for p, _ in flat]
        self.leaves = [x for _, x in flat]
        self.nbytes = sum(leaf_nbytes(x) for x in self.leaves)

    @cached_property
    def abstract(self) -> Any:
        """The tree with `jax.ShapeDtypeStruct` leaves (what `eqx.filter_eval_shape` gives a user)."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.tree)

    @cached_property
    def numpy_skeleton(self) -> Any:
        """The tree with lazily zeroed numpy leaves (typed PRNG keys stay abstract)."""
        return jax.tree.map(
            lambda x: (
                jax.ShapeDtypeStruct(x.shape, x.dtype) if is_key(x) else np.zeros(x.shape, x.dtype)
            ),
            self.tree,
        )

    @cached_property
    def flat(self) -> dict[str, Any]:
        """`{key path: leaf}`: the state dict a user of a flat format builds."""
        return dict(zip(self.paths, self.leaves))

    def one_leaf(self) -> Any:
        """The original leaf at `one_key`."""
        return self.leaves[self.paths.index(self.one_key)]


def is_key(x: Any) -> bool:
    """Whether `x` is a typed PRNG key array."""
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def leaf_nbytes(x: Any) -> int:
    """Bytes of a leaf's data (a typed key's key data)."""
    if is_key(x):
        return int(jax.random.key_data(x).nbytes)
    return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def _normal(rng: np.random.Generator | None, shape: tuple[int, ...], scale: float = 0.02) -> Any:
    """A float32 jax array of seeded noise (its `jax.ShapeDtypeStruct` when `rng` is None)."""
    if rng is None:
        return jax.ShapeDtypeStruct(shape, jnp.float32)
    host = rng.random(shape, dtype=np.float32)
    host -= 0.5
    host *= scale
    return jnp.asarray(host)


def _norm(rng: np.random.Generator | None, d: int) -> LayerNorm:
    weight = _normal(rng, (d,))
    return LayerNorm(weight if rng is None else 1 + weight, _normal(rng, (d,)))


def transformer_width(size_mib: float, blocks: int = 8) -> int:
    """The model width whose `blocks` blocks plus a 4*d vocabulary embedding make about size_mib."""
    params = size_mib * MIB / 4
    return max(32, round(math.sqrt(params / (12 * blocks + 4)) / 32) * 32)


def transformer(
    size_mib: float, seed: int = SEED, blocks: int = 8, abstract: bool = False
) -> Transformer:
    """A transformer-like Module of about `size_mib` MiB of float32 in 10 leaves a block + 3."""
    d = transformer_width(size_mib, blocks)
    rng = None if abstract else np.random.default_rng(seed)

    def block() -> Block:
        lin = [Linear(_normal(rng, (d, d))) for _ in range(4)]
        up, down = Linear(_normal(rng, (4 * d, d))), Linear(_normal(rng, (d, 4 * d)))
        return Block(_norm(rng, d), *lin, _norm(rng, d), up, down)

    return Transformer(_normal(rng, (4 * d, d)), [block() for _ in range(blocks)], _norm(rng, d))


def w1(size_mib: float, abstract: bool = False) -> Workload:
    """W1: a transformer-like Module with jax leaves."""
    model = transformer(size_mib, abstract=abstract)
    d = model.embed.shape[1]
    title = f"W1: transformer Module, 8 blocks, d={d}, jax float32 leaves"
    return Workload("W1", title, model, f".blocks[{len(model.blocks) // 2}].up.weight")


def w2(groups: int, per_group: int, numpy_leaves: bool, seed: int = SEED) -> Workload:
    """W2: `groups` dicts, each of per_group/2 named arrays and a list of per_group/2 more."""
    rng = np.random.default_rng(seed + 2)

    def array() -> np.ndarray:
        return rng.random(int(rng.integers(16, 257)), dtype=np.float32)

    half = per_group // 2
    tree: Any = [
        {
            "named": {f"p{j:03d}": array() for j in range(half)},
            "listed": [array() for _ in range(half)],
        }
        for _ in range(groups)
    ]
    if not numpy_leaves:
        leaves, treedef = jtu.tree_flatten(tree)
        tree = jtu.tree_unflatten(treedef, jax.device_put(leaves))
    kind = "numpy" if numpy_leaves else "jax"
    name = "W2-np" if numpy_leaves else "W2-jax"
    title = (
        f"{name}: {groups * per_group:,} small {kind} leaves (16-256 float32) in dicts and lists"
    )
    return Workload(
        name, title, tree, f"[{groups // 2}]['listed'][{half // 2}]", numpy_leaves=numpy_leaves
    )


def w3(rows: int) -> Workload:
    """W3: one leaf per awkward dtype, `rows` x 256 elements each."""
    rng = np.random.default_rng(SEED + 3)
    shape = (rows, 256)
    bits = rng.integers(0, 256, shape, dtype=np.uint8)
    fp8 = np.where(np.isnan(bits.view(ml_dtypes.float8_e4m3fn)), 0, bits).astype(np.uint8)
    model = Mixed(
        f32=jnp.asarray(rng.random(shape, dtype=np.float32)),
        bf16=jnp.asarray(rng.random(shape, dtype=np.float32).astype(ml_dtypes.bfloat16)),
        fp8=jnp.asarray(fp8.view(ml_dtypes.float8_e4m3fn)),
        int4=jnp.asarray(rng.integers(-8, 8, shape, dtype=np.int8).astype(ml_dtypes.int4)),
        int8=jnp.asarray(rng.integers(-128, 128, shape, dtype=np.int8)),
        mask=jnp.asarray(rng.random(shape) < 0.5),
        c64=jnp.asarray((rng.random(shape) + 1j * rng.random(shape)).astype(np.complex64)),
        scalar=jnp.asarray(np.float32(3.25)),
        keys=jax.random.split(jax.random.key(SEED), rows),
    )
    title = f"W3: Module of mixed dtypes (bf16, fp8_e4m3fn, int4, int8, bool, complex64, 0-d, PRNG keys), {rows}x256 each"
    return Workload("W3", title, model, ".int4")


def w4(model_mib: float, abstract: bool = False) -> Workload:
    """W4: an optax adam state (random moments) for a W1-like model of `model_mib` MiB."""
    import optax

    mu = transformer(model_mib, seed=SEED + 4, abstract=abstract)
    nu = transformer(model_mib, seed=SEED + 5, abstract=abstract)
    nu = nu if abstract else jax.tree.map(abs, nu)
    skeleton = jax.eval_shape(optax.adam(1e-3).init, mu)  # the state's structure, without zeros
    state = (skeleton[0]._replace(count=jnp.asarray(7, jnp.int32), mu=mu, nu=nu), *skeleton[1:])
    model = mu
    key = f"[0].mu.blocks[{len(model.blocks) // 2}].up.weight"
    title = f"W4: optax adam state (count, mu, nu) for a {model_mib:g} MiB W1-like model"
    return Workload("W4", title, state, key)


@dataclass(frozen=True)
class Sizes:
    """How big each workload is in one run."""

    w1_mib: float
    w2_groups: int
    w2_per_group: int
    w3_rows: int
    w4_model_mib: float

    @classmethod
    def of(cls, quick: bool, size_mib: float | None, w4_mib: float | None = None) -> Sizes:
        """Quick sizes (whole run < 60 s) or full ones; `size_mib` overrides W1's size."""
        w1_mib = size_mib or (4 if quick else 1024)
        w4_default = min(
            w1_mib, 4 if quick else 256
        )  # scaled: W1's own model would be a ~2 GiB state
        return cls(w1_mib, 5 if quick else 100, 100, 64 if quick else 4096, w4_mib or w4_default)


WORKLOADS = ("W1", "W2-np", "W2-jax", "W3", "W4")


def build(name: str, sizes: Sizes, abstract: bool = False) -> Workload:
    """Build one workload by name (deterministic: the same tree in every process).

    `abstract=True` gives the same structure with `jax.ShapeDtypeStruct` for the big leaves, for
    processes that only load (they need the treedef and skeletons, not the data).
    """
    if name == "W1":
        return w1(sizes.w1_mib, abstract)
    if name in ("W2-np", "W2-jax"):
        return w2(sizes.w2_groups, sizes.w2_per_group, numpy_leaves=name == "W2-np")
    if name == "W3":
        return w3(sizes.w3_rows)
    if name == "W4":
        return w4(sizes.w4_model_mib, abstract)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
