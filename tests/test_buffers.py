"""dumps_into / dumps_size: writing a file into a caller's (reused) buffer."""

import mmap

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import eqx_msg

from conftest import assert_same_tree


def _tree():
    return {
        "model": eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(0)),
        "int4": np.arange(-8, 7, dtype=ml_dtypes.int4),
        "key": jax.random.split(jax.random.key(1), 3),
        "abstract": jax.ShapeDtypeStruct((4, 5), jnp.bfloat16),
        "numpy": np.linspace(0, 1, 33),
        "step": 7,
    }


@pytest.mark.parametrize("alignment", [64, 4096])
def test_dumps_size_is_the_length_of_dumps(alignment):
    tree = _tree()
    metadata = {"step": 3, "note": "x" * 1000}
    data = eqx_msg.dumps(tree, metadata=metadata, alignment=alignment)
    assert eqx_msg.dumps_size(tree, metadata=metadata, alignment=alignment) == len(data)
    assert eqx_msg.dumps_size(tree) != len(data)  # metadata and alignment count


def test_dumps_into_writes_the_same_bytes_and_leaves_the_rest():
    tree = _tree()
    data = eqx_msg.dumps(tree, metadata={"a": 1})
    buffer = bytearray(b"\xab" * (len(data) + 1000))
    n = eqx_msg.dumps_into(tree, buffer, metadata={"a": 1})
    assert n == len(data)
    assert bytes(buffer[:n]) == data
    assert buffer[n:] == b"\xab" * 1000
    assert_same_tree(tree, eqx_msg.loads(memoryview(buffer)[:n]))


def test_dumps_into_an_mmap_loads_back_zero_copy():
    tree = {"w": jnp.arange(4096, dtype=jnp.float32), "b": jnp.ones((7, 3), jnp.bfloat16)}
    size = eqx_msg.dumps_size(tree)
    buffer = mmap.mmap(-1, size)  # not closed: the loaded arrays keep it alive
    assert eqx_msg.dumps_into(tree, buffer) == size
    loaded = eqx_msg.loads(buffer)
    assert_same_tree(tree, loaded)
    start = np.frombuffer(buffer, np.uint8).ctypes.data
    for leaf in loaded.values():  # an mmap is page aligned: XLA aliases every leaf
        assert start <= leaf.unsafe_buffer_pointer() < start + size


def test_dumps_into_a_reused_numpy_buffer_overwrites_the_previous_file():
    buffer = np.zeros(1 << 16, np.uint8)
    first = {"w": np.full(100, 1.0, np.float32)}
    second = {"w": np.full(100, 2.0, np.float32), "extra": np.arange(5)}
    eqx_msg.dumps_into(first, buffer)
    n = eqx_msg.dumps_into(second, buffer)
    loaded = eqx_msg.loads(buffer[:n].copy())
    assert_same_tree(second, loaded)


def test_dumps_into_too_small_a_buffer_says_how_big_and_writes_nothing():
    tree = _tree()
    size = eqx_msg.dumps_size(tree)
    buffer = bytearray(b"\x01" * (size - 1))
    with pytest.raises(eqx_msg.LengthError, match=f"takes {size} bytes.*holds only {size - 1}"):
        eqx_msg.dumps_into(tree, buffer)
    assert buffer == b"\x01" * (size - 1)


def test_dumps_into_a_read_only_buffer_is_a_type_error():
    with pytest.raises(TypeError, match="read-only"):
        eqx_msg.dumps_into({"a": np.ones(3)}, b"\x00" * 4096)
    with pytest.raises(TypeError, match="writable"):
        eqx_msg.dumps_into({"a": np.ones(3)}, [0] * 4096)


def test_dumps_into_refuses_a_leaf_inside_the_buffer():
    buffer = np.arange(1 << 16, dtype=np.uint32).view(np.uint8)
    before = buffer.copy()
    tree = {"ok": np.ones(3), "inside": buffer[4096:8192].view(np.float32)}
    with pytest.raises(eqx_msg.LayoutError, match="leaf 1 lies inside the output buffer"):
        eqx_msg.dumps_into(tree, buffer)
    np.testing.assert_array_equal(buffer, before)
