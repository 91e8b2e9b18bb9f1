"""Array leaves of every dtype JAX has, keys, abstract leaves, odd layouts, and the 64-bit rule."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import eqx_msg

RNG = np.random.default_rng(0)
FLOAT8 = [n for n in dir(ml_dtypes) if n.startswith("float8_")]
SUBBYTE = [n for n in ("int4", "uint4", "int2", "uint2", "float4_e2m1fn") if hasattr(ml_dtypes, n)]
PLAIN = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
         "float16", "float32", "float64", "bfloat16", "complex64", "complex128",
         "float6_e2m3fn", "float6_e3m2fn"]  # fmt: skip


def _random(dtype, shape):
    dtype = np.dtype(getattr(ml_dtypes, dtype, dtype))
    if dtype == np.bool_:
        return RNG.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return RNG.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    if dtype.kind == "c":
        return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(dtype)
    if dtype.name in SUBBYTE:
        info = ml_dtypes.iinfo(dtype) if "int" in dtype.name else None
        if info is not None:
            return RNG.integers(int(info.min), int(info.max) + 1, shape).astype(dtype)
        return RNG.choice(np.array([-6, -1, -0.5, 0, 0.5, 1, 3, 6]), shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", PLAIN + FLOAT8 + SUBBYTE)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 3)])
def test_numpy_every_dtype_and_shape(dtype, shape, roundtrip):
    roundtrip({"x": _random(dtype, shape)})


# Every dtype a jax.Array can hold here: not the 64-bit ones (x64 is off), not float6 (XLA has none).
JAX_DTYPES = [
    d
    for d in PLAIN + FLOAT8 + SUBBYTE
    if d not in ("int64", "uint64", "float64", "complex128") and not d.startswith("float6")
]


@pytest.mark.parametrize("dtype", JAX_DTYPES)
def test_jax_every_dtype(dtype, roundtrip):
    x = jnp.asarray(_random(dtype, (3, 5)))
    loaded = roundtrip({"x": x})
    assert isinstance(loaded["x"], jax.Array)


def test_subbyte_is_packed_on_disk():
    x = _random("int4", (1001,))
    header = eqx_msg.header(eqx_msg.dumps({"x": x}))
    assert header.leaves[0].nbytes == 501


def test_non_contiguous_and_big_endian_inputs(roundtrip):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    strided = base[:, ::2]
    transposed = base.T
    big = np.arange(5, dtype=">i4")
    loaded = eqx_msg.loads(eqx_msg.dumps([strided, transposed, big]))
    for a, b in zip([strided, transposed, big], loaded):
        np.testing.assert_array_equal(a, b)
        assert b.flags.c_contiguous
    assert loaded[2].dtype == np.dtype("<i4")


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_typed_prng_keys(impl, roundtrip):
    key = jax.random.key(42, impl=impl)
    tree = {"key": key, "split": jax.random.split(key, 3), "grid": jax.random.split(key, (2, 2))}
    loaded = roundtrip(tree)
    assert jax.random.key_impl(loaded["key"]) == jax.random.key_impl(key)
    assert jnp.array_equal(jax.random.normal(loaded["key"], (4,)), jax.random.normal(key, (4,)))


def test_legacy_uint32_keys_stay_arrays(roundtrip):
    roundtrip({"k": jax.random.PRNGKey(0)})


def test_shape_dtype_struct_leaves(roundtrip):
    key = jax.random.key(0)
    tree = {
        "a": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16),
        "w": jax.ShapeDtypeStruct((), jnp.float32, weak_type=True),
        "k": jax.ShapeDtypeStruct((2,), key.dtype),
    }
    loaded = eqx_msg.loads(eqx_msg.dumps(tree))
    assert loaded == tree


def test_weak_type_is_kept(roundtrip):
    loaded = roundtrip({"w": jnp.asarray(1.0) * 2, "s": jnp.array(3)})
    assert loaded["w"].weak_type


def test_jax_and_numpy_kinds_are_kept(roundtrip):
    loaded = roundtrip([np.ones(3), jnp.ones(3)])
    assert type(loaded[0]) is np.ndarray and isinstance(loaded[1], jax.Array)


def test_numpy_64bit_exact_whatever_x64_says(roundtrip):
    x = np.array([2**62 + 1, -(2**63)], dtype=np.int64)
    f = np.array([1 / 3], dtype=np.float64)
    loaded = roundtrip({"i": x, "f": f})
    assert loaded["i"].dtype == np.int64 and loaded["i"][0] == 2**62 + 1


def test_jax_64bit_leaves_saved_with_x64_load_exact_without_it(tmp_path):
    path = tmp_path / "x64.eqx"
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np, eqx_msg, warnings
        jax.config.update("jax_enable_x64", True)
        x = jnp.array([2**62 + 1], dtype=jnp.int64)
        eqx_msg.save({str(path)!r}, {{"x": x, "f": jnp.array([1/3], dtype=jnp.float64)}})
        loaded = eqx_msg.load({str(path)!r})
        assert isinstance(loaded["x"], jax.Array) and int(loaded["x"][0]) == 2**62 + 1
        jax.config.update("jax_enable_x64", False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = eqx_msg.load({str(path)!r})
        assert type(loaded["x"]) is np.ndarray and loaded["x"][0] == 2**62 + 1, loaded
        assert loaded["f"][0] == 1/3
        assert any("jax_enable_x64" in str(w.message) for w in caught)
        assert any("['x']" in str(w.message) for w in caught)  # names the leaves
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_unsupported_leaf_names_its_path():
    with pytest.raises(eqx_msg.UnserialisableError, match=r"\['bad'\]\[1\].*object"):
        eqx_msg.dumps({"bad": [np.ones(1), object()]})


def test_object_arrays_are_refused():
    with pytest.raises(eqx_msg.UnserialisableError, match=r"\['o'\]"):
        eqx_msg.dumps({"o": np.array([object()])})


def test_tracers_are_refused():
    @jax.jit
    def f(x):
        eqx_msg.dumps({"x": x})
        return x

    with pytest.raises(eqx_msg.UnserialisableError, match="traced"):
        f(jnp.ones(2))
