"""GPU placement: runs only where JAX sees a GPU, skips cleanly elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import eqx_msg

from conftest import jax_holds

GPUS = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" else []
pytestmark = pytest.mark.skipif(not GPUS, reason="needs a GPU")


def test_load_onto_gpu_many_and_large_leaves(tmp_path):
    tree = {
        "big": [jnp.full((1 << 20,), i, jnp.float32) for i in range(4)],
        "small": [jnp.full((4,), i, jnp.int32) for i in range(1000)],
        "host": np.ones(3),
    }
    path = tmp_path / "g.eqx"
    eqx_msg.save(path, tree)
    loaded = eqx_msg.load(path, device=GPUS[0])
    for a, b in zip(tree["big"] + tree["small"], loaded["big"] + loaded["small"]):
        assert isinstance(b, jax.Array) and b.devices() == {GPUS[0]}
        assert jnp.array_equal(a, b)
    assert type(loaded["host"]) is np.ndarray  # numpy leaves stay numpy


def test_save_from_gpu(tmp_path):
    x = jax.device_put(jnp.arange(1000.0), GPUS[0])
    path = tmp_path / "s.eqx"
    eqx_msg.save(path, {"x": x})
    assert jnp.array_equal(eqx_msg.load(path, device=GPUS[0])["x"], x)


def _on(array, device) -> bool:
    return isinstance(array, jax.Array) and array.devices() == {device}


def test_every_jax_dtype_onto_gpu(tmp_path):
    import ml_dtypes

    # The format's table, less the 64-bit types and what this JAX has no arrays of (float6, ...).
    names = [
        n
        for n in eqx_msg._core.dtype_names()
        if n not in ("int64", "uint64", "float64", "complex128")
        and (hasattr(ml_dtypes, n) or hasattr(np, n))
        and jax_holds(np.dtype(getattr(ml_dtypes, n, n)))
    ]
    rng = np.random.default_rng(0)
    tree = {}
    for name in names:
        dtype = jnp.dtype(name)
        values = rng.integers(-7, 8, (3, 5)) if dtype.kind in "iu" else rng.standard_normal((3, 5))
        if name.startswith("u"):
            values = np.abs(values)
        tree[name] = jax.device_put(np.asarray(values).astype(dtype), GPUS[0])
    tree["key"] = jax.device_put(jax.random.key(3), GPUS[0])
    tree["weak"] = jax.device_put(jnp.asarray(1.5), GPUS[0])  # weak-typed scalar
    path = tmp_path / "d.eqx"
    eqx_msg.save(path, tree)
    loaded = eqx_msg.load(path, device=GPUS[0])
    for name in names:
        assert _on(loaded[name], GPUS[0]) and loaded[name].dtype == tree[name].dtype, name
        assert np.asarray(loaded[name]).tobytes() == np.asarray(tree[name]).tobytes(), name
    assert _on(loaded["key"], GPUS[0])
    assert jax.random.key_impl(loaded["key"]) == jax.random.key_impl(tree["key"])
    assert np.array_equal(jax.random.key_data(loaded["key"]), jax.random.key_data(tree["key"]))
    assert loaded["weak"].weak_type and float(loaded["weak"]) == 1.5


def test_reader_get_and_filter_onto_gpu(tmp_path):
    tree = {"enc": {"w": jnp.arange(12.0).reshape(3, 4)}, "dec": {"w": jnp.ones((2, 2))}}
    path = tmp_path / "r.eqx"
    eqx_msg.save(path, tree)
    with eqx_msg.open(path) as reader:
        w = reader.get("['enc']['w']", device=GPUS[0])
        assert _on(w, GPUS[0]) and jnp.array_equal(w, tree["enc"]["w"])
        part = reader.load(filter=lambda key: key.startswith("['enc']"), device=GPUS[0])
    assert _on(part["enc"]["w"], GPUS[0])
    assert isinstance(part["dec"]["w"], jax.ShapeDtypeStruct)  # not selected: not read


def test_sharded_save_and_saved_layout_on_gpus(tmp_path):
    mesh = Mesh(np.array(GPUS), ("x",))
    rows = len(GPUS) * 4
    array = jax.device_put(jnp.arange(rows * 8.0).reshape(rows, 8), NamedSharding(mesh, P("x")))
    path = tmp_path / "m.eqx"
    eqx_msg.save(path, {"w": array})
    loaded = eqx_msg.load(path, sharding="saved")["w"]
    assert loaded.sharding == array.sharding
    assert jnp.array_equal(loaded, array)
    replicated = eqx_msg.load(path, sharding=NamedSharding(mesh, P()))["w"]
    assert replicated.sharding.spec == P() and jnp.array_equal(replicated, array)


def test_module_onto_gpu(tmp_path):
    import equinox as eqx

    model = eqx.nn.MLP(4, 2, 8, 2, key=jax.random.key(0))
    path = tmp_path / "mlp.eqx"
    eqx_msg.save(path, model)
    loaded = eqx_msg.load(path, device=GPUS[0])
    x = jax.device_put(jnp.ones(4), GPUS[0])
    assert all(_on(leaf, GPUS[0]) for leaf in jax.tree.leaves(eqx.filter(loaded, eqx.is_array)))
    assert jnp.allclose(loaded(x), model(x))
