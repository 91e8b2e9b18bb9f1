"""GPU placement: runs only where JAX sees a GPU, skips cleanly elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg

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
