"""The extension's `FileHeader.arrays`: views that are right, and misuse refused without a crash."""

import gc
import itertools

import jax
import ml_dtypes
import numpy as np
import pytest

import eqx_msg
from eqx_msg import _core, _file, _leaves, _plan
from eqx_msg._errors import DTypeError, LayoutError

from conftest import crc32c


def _opened(tree):
    return _file.File(_file.as_bytes_array(eqx_msg.dumps(tree)))


def _dtypes(file):
    return _leaves.numpy_dtypes(file.table)


def test_views_are_read_only_c_contiguous_and_inside_the_buffer():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.int16)
    file = _opened({"a": a, "b": b})
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
    file = _opened({"a": np.arange(1000, dtype=np.int64)})
    (view,) = file.arrays()
    del file
    gc.collect()
    junk = [np.full(1000, -1, np.int64) for _ in range(100)]  # reuse freed memory if it was freed
    np.testing.assert_array_equal(view, np.arange(1000))
    del junk


def test_indices_choose_leaves_and_abstract_leaves_give_none():
    abstract = jax.ShapeDtypeStruct((5, 5), np.float32)
    file = _opened([np.ones(3, np.float32), abstract, np.zeros(0, np.uint8)])
    ones, none, empty = file.arrays()
    assert ones.tolist() == [1, 1, 1] and none is None and empty.shape == (0,)
    assert [v.shape for v in file.arrays([2, 0])] == [(0,), (3,)]


def test_packed_dtypes_come_unpacked():
    values = np.array([[-8, -1, 0], [1, 6, 7]], dtype=ml_dtypes.int4)
    file = _opened({"q": values})
    (out,) = file.arrays()
    assert out.dtype == values.dtype and out.shape == (2, 3)
    np.testing.assert_array_equal(out.astype(np.int8), values.astype(np.int8))
    assert not out.flags.writeable


def test_a_buffer_of_another_length_is_refused():
    file = _opened({"a": np.ones(16, np.float32)})
    longer = np.concatenate([file.buf, np.zeros(64, np.uint8)])
    with pytest.raises(LayoutError, match="the buffer holds"):
        file.header.arrays(longer, _dtypes(file))
    with pytest.raises(LayoutError, match="the buffer holds"):
        file.header.arrays(file.buf[:-64], _dtypes(file))


def test_a_dtype_list_of_the_wrong_length_is_refused():
    file = _opened({"a": np.ones(16, np.float32)})
    with pytest.raises(LayoutError, match="1 leaf types"):
        file.header.arrays(file.buf, [])


@pytest.mark.parametrize("dtype", [np.float64, np.uint8, object, np.dtype("V8")])
def test_a_dtype_that_does_not_fit_the_bytes_is_refused(dtype):
    file = _opened({"a": np.ones(16, np.float32)})
    with pytest.raises(DTypeError, match=r"leaf 0: numpy dtype .* does not fit float32"):
        file.header.arrays(file.buf, [np.dtype(dtype)])


def test_an_index_out_of_range_is_refused():
    file = _opened({"a": np.ones(2, np.float32)})
    with pytest.raises(IndexError, match="leaf 1 of 1"):
        file.header.arrays(file.buf, _dtypes(file), [1])


def test_write_range_places_leaves_and_zeros_the_gaps():
    a, b = np.arange(3, dtype=np.uint16), np.full(2, 7, np.uint8)
    out, crcs = _core.write_range(64, 32, [66, 80], [a, b])
    want = np.zeros(32, np.uint8)
    want[2:8] = a.view(np.uint8)
    want[16:18] = 7
    assert out == want.tobytes()
    assert crcs == [crc32c(a.tobytes()), crc32c(b.tobytes())]


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


def test_aligned_copy_refuses_an_alignment_past_the_format_limit():
    with pytest.raises(LayoutError, match="power of two up to"):
        _core.aligned_copy(np.zeros(1, np.uint8), 1 << 50)
    copy, offset = _core.aligned_copy(np.arange(5, dtype=np.uint8), 1 << 20)
    assert copy[offset : offset + 5].tolist() == [0, 1, 2, 3, 4]
    assert (copy.ctypes.data + offset) % (1 << 20) == 0


def _one_leaf_file(kind, dtype, shape, nbytes):
    from conftest import frame

    record = {"path": "['x']", "kind": kind, "dtype": dtype, "shape": shape}
    if kind != "abstract":
        record.update(offset=0, nbytes=nbytes)
    header = {"format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": nbytes,
              "leaves": [record], "tree": {"t": "dict", "k": ["x"], "c": [0]}}  # fmt: skip
    return frame(header, bytes(nbytes))


def test_shapes_with_a_zero_dimension_follow_the_zero_rule():
    # Valid files (0 elements), however large the other dimensions (within the size rule).
    for kind in ("numpy", "abstract"):
        loaded = eqx_msg.loads(_one_leaf_file(kind, "float32", [2**40, 2**20, 0], 0))
        assert loaded["x"].shape == (2**40, 2**20, 0)
        assert eqx_msg.loads(_one_leaf_file(kind, "float32", [2**60, 0], 0))["x"].shape == (
            2**60,
            0,
        )
    # numpy and XLA cannot make these: their size check (item size times the nonzero dimensions,
    # at most 2**63 - 1) skips zero dimensions, not the others. int4 unpacks to 1-byte items. The
    # rule (FORMAT.md section 3) covers abstract leaves too, and is checked when a file is opened.
    too_large = [[2**62, 4, 0], [2**63, 0], [0, 2**64 - 1], [0, 2**62, 2], [2**32, 0, 2**31],
                 [2**40, 2**40, 0]]  # fmt: skip
    for kind, dtype, shape in itertools.product(
        ("numpy", "abstract"), ("int4", "float32"), too_large
    ):
        data = _one_leaf_file(kind, dtype, shape, 0)
        for read in (eqx_msg.loads, eqx_msg.header):
            with pytest.raises(eqx_msg.LimitError, match="too large for a numpy array"):
                read(data)
    with pytest.raises(eqx_msg.LimitError, match="too large for a numpy array"):
        eqx_msg.loads(_one_leaf_file("numpy", "float32", [0, 2**62], 0))
    assert eqx_msg.loads(_one_leaf_file("numpy", "int4", [0, 2**62], 0))["x"].shape == (0, 2**62)


def test_assemble_into_refuses_a_leaf_anywhere_inside_the_output_buffer():
    planned = _plan.plan({"w": np.zeros(8, np.uint8)}, None, 64)
    size = _core.total_len(planned.header)
    out = np.zeros(size + 64, np.uint8)
    with pytest.raises(LayoutError, match="inside the output buffer"):
        _core.assemble_into(planned.header, [out[size + 8 : size + 16]], out)  # past the file


def test_write_range_refuses_a_segment_whose_end_overflows():
    with pytest.raises(LayoutError, match="data segment 0"):
        _core.write_range(2**64 - 17, 16, [2**64 - 5], [np.arange(1, 9, dtype=np.uint8)])
