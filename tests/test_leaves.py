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

from conftest import format_dtype, jax_holds, reframe

RNG = np.random.default_rng(0)
# The format's own dtype table (FORMAT.md section 5), not whatever the installed ml_dtypes offers: a
# name the installed ml_dtypes lacks is skipped, and one it adds is refused (see below).
DTYPES = eqx_msg._core.dtype_names()
X64_ONLY = ("int64", "uint64", "float64", "complex128")  # jax.Arrays only with x64 on (it is off)


def _random(name, shape):
    dtype = format_dtype(name)
    if name == "bool":
        return RNG.integers(0, 2, shape).astype(bool)
    if "int" in name and dtype.kind in "iu":
        info = np.iinfo(dtype)
        return RNG.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    if "int" in name:  # ml_dtypes' int4, uint2, ... (numpy kind "V")
        info = ml_dtypes.iinfo(dtype)
        return RNG.integers(int(info.min), int(info.max), shape, endpoint=True).astype(dtype)
    if dtype.kind == "c":
        return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)  # (NaN where an unsigned float8 meets x < 0)


def test_the_tables_widths_are_numpys_itemsizes_or_packed():
    assert len(DTYPES) == len(set(DTYPES))
    for name in DTYPES:
        bits = eqx_msg._core.dtype_bits(name)
        if hasattr(ml_dtypes, name) or hasattr(np, name):
            assert bits == format_dtype(name).itemsize * 8 or bits < 8, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 3)])
def test_numpy_every_dtype_and_shape(dtype, shape, roundtrip):
    roundtrip({"x": _random(dtype, shape)})


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d not in X64_ONLY])
def test_jax_every_dtype_or_a_dtype_error_and_numpy_where_jax_lacks_it(dtype, roundtrip):
    x = _random(dtype, (3, 5))
    if jax_holds(x.dtype):
        loaded = roundtrip({"x": jnp.asarray(x)})
        assert isinstance(loaded["x"], jax.Array)
        return

    # No jax.Array of it here (float6: XLA has none; float8_e5m3fnu until JAX takes it up): a file
    # that says it holds one is refused for a jax leaf and read as numpy with as_numpy=True.
    def as_jax(header):
        header["leaves"][0]["kind"] = "jax"

    data = reframe(eqx_msg.dumps({"x": x}), as_jax)
    with pytest.raises(eqx_msg.DTypeError, match=rf"\['x'\]: a jax leaf of dtype {dtype}"):
        eqx_msg.loads(data)
    loaded = eqx_msg.loads(data, as_numpy=True)["x"]
    assert type(loaded) is np.ndarray and loaded.tobytes() == x.tobytes()


def _unknown_to_the_table() -> dict[str, type]:
    """ml_dtypes' scalar types whose names the format's table lacks: none when the table is current."""
    types = [getattr(ml_dtypes, n) for n in dir(ml_dtypes)]
    found = {
        np.dtype(t).name: t for t in types if isinstance(t, type) and issubclass(t, np.generic)
    }
    return {name: t for name, t in found.items() if name not in DTYPES}


UNKNOWN = _unknown_to_the_table()


@pytest.mark.parametrize("real", [*sorted(UNKNOWN), None])
def test_a_dtype_the_table_lacks_is_refused_at_every_writer(real, monkeypatch, tmp_path):
    from eqx_msg import _dtypes

    name = real or "float8_e4m3b11fnuz"
    if real is None:  # fabricated: the table as it was before it had this ml_dtypes type
        monkeypatch.setattr(_dtypes, "_NAMES", _dtypes._NAMES - {name})
        monkeypatch.setattr(_dtypes, "name_cache", {})
    scalar_type = UNKNOWN[name] if real else getattr(ml_dtypes, name)
    tree = {"ok": np.ones(2, np.float32), "x": np.zeros(3, scalar_type)}
    target = tmp_path / "m.eqx"
    writers = {
        "dumps": lambda: eqx_msg.dumps(tree),
        "save": lambda: eqx_msg.save(target, tree),
        "dumps_into": lambda: eqx_msg.dumps_into(tree, bytearray(1 << 16)),
    }
    for writer, write in writers.items():
        with pytest.raises(eqx_msg.UnserialisableError, match=rf"\['x'\]: dtype {name} ") as err:
            write()
        assert isinstance(err.value, eqx_msg.EqxMsgError), writer
    assert list(tmp_path.iterdir()) == []  # save left neither the file nor a temporary


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
