"""The extension's `FileHeader.arrays`: views that are right, and misuse refused without a crash."""

import gc

import jax
import ml_dtypes
import numpy as np
import pytest

import eqx_msg
from eqx_msg import _codec, _core, _leaves
from eqx_msg._errors import DTypeError, LayoutError


def _file(tree):
    return _codec.File(_codec.as_bytes_array(eqx_msg.dumps(tree)))


def _dtypes(file):
    return _leaves.numpy_dtypes(file.table)


def test_views_are_read_only_c_contiguous_and_inside_the_buffer():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.int16)
    file = _file({"a": a, "b": b})
    views = file.arrays()
    start = file.buf.ctypes.data
    for view, want in zip(views, [a, b]):
        np.testing.assert_array_equal(view, want)
        assert view.dtype == want.dtype and view.shape == want.shape
        assert view.flags.c_contiguous and not view.flags.writeable
        assert start <= view.ctypes.data < start + len(file.buf)
        with pytest.raises(ValueError):
            view[...] = 0


def test_views_keep_the_buffer_alive():
    file = _file({"a": np.arange(1000, dtype=np.int64)})
    (view,) = file.arrays()
    del file
    gc.collect()
    junk = [np.full(1000, -1, np.int64) for _ in range(100)]  # reuse freed memory if it was freed
    np.testing.assert_array_equal(view, np.arange(1000))
    del junk


def test_indices_choose_leaves_and_abstract_leaves_give_none():
    abstract = jax.ShapeDtypeStruct((5, 5), np.float32)
    file = _file([np.ones(3, np.float32), abstract, np.zeros(0, np.uint8)])
    ones, none, empty = file.arrays()
    assert ones.tolist() == [1, 1, 1] and none is None and empty.shape == (0,)
    assert [v.shape for v in file.arrays([2, 0])] == [(0,), (3,)]


def test_packed_dtypes_come_unpacked():
    values = np.array([[-8, -1, 0], [1, 6, 7]], dtype=ml_dtypes.int4)
    file = _file({"q": values})
    (out,) = file.arrays()
    assert out.dtype == values.dtype and out.shape == (2, 3)
    np.testing.assert_array_equal(out.astype(np.int8), values.astype(np.int8))
    assert not out.flags.writeable


def test_a_buffer_of_another_length_is_refused():
    file = _file({"a": np.ones(16, np.float32)})
    longer = np.concatenate([file.buf, np.zeros(64, np.uint8)])
    with pytest.raises(LayoutError, match="the buffer holds"):
        file.header.arrays(longer, _dtypes(file))
    with pytest.raises(LayoutError, match="the buffer holds"):
        file.header.arrays(file.buf[:-64], _dtypes(file))


def test_a_dtype_list_of_the_wrong_length_is_refused():
    file = _file({"a": np.ones(16, np.float32)})
    with pytest.raises(LayoutError, match="1 leaf types"):
        file.header.arrays(file.buf, [])


@pytest.mark.parametrize("dtype", [np.float64, np.uint8, object, np.dtype("V8")])
def test_a_dtype_that_does_not_fit_the_bytes_is_refused(dtype):
    file = _file({"a": np.ones(16, np.float32)})
    with pytest.raises(DTypeError, match=r"leaf 0: numpy dtype .* does not fit float32"):
        file.header.arrays(file.buf, [np.dtype(dtype)])


def test_an_index_out_of_range_is_refused():
    file = _file({"a": np.ones(2, np.float32)})
    with pytest.raises(IndexError, match="leaf 1 of 1"):
        file.header.arrays(file.buf, _dtypes(file), [1])


def test_write_range_places_leaves_and_zeros_the_gaps():
    a, b = np.arange(3, dtype=np.uint16), np.full(2, 7, np.uint8)
    out = _core.write_range(64, 32, [66, 80], [a, b])
    want = np.zeros(32, np.uint8)
    want[2:8] = a.view(np.uint8)
    want[16:18] = 7
    assert out == want.tobytes()


@pytest.mark.parametrize(
    ("offsets", "leaves", "message"),
    [
        ([0], [], "1 offsets for 0 leaves"),
        ([0, 4], [np.ones(8, np.uint8)] * 2, "data segment 1"),  # overlap
        ([8, 0], [np.ones(4, np.uint8)] * 2, "data segment 1"),  # out of order
        ([30], [np.ones(4, np.uint8)], "data segment 0"),  # past the end
        ([0], [np.ones((4, 4), np.uint8)[:, 0]], "not C-contiguous"),
    ],
)
def test_write_range_refuses_bad_segments(offsets, leaves, message):
    with pytest.raises(LayoutError, match=message):
        _core.write_range(0, 32, offsets, leaves)


def test_the_stub_file_matches_the_extension(tmp_path):
    """mypy's stubtest: every name, signature and class in `_core.pyi` is what the extension has."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "eqx_msg._core"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=tmp_path,  # (mypy's cache goes there, not into the checkout)
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success" in done.stdout
