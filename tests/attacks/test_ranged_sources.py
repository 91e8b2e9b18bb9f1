"""Hostile and buggy sources read by range (`read_into` objects, file objects), and hostile files
read through them: every lie a source tells about its size or its reads ends in an `EqxMsgError`
(a source breaking the protocol itself, such as a `size` that is not an int, in a `TypeError`; a
source's own `OSError` propagates), the costs stay bounded by what is asked for (reads counted,
memory traced), and every row slice is numpy's answer on the same array.
"""

import io
import math
import os
import struct
import sys
import threading
import tracemalloc

import hostile
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqx_msg


class Source:
    """The `read_into` protocol over `data`, recording every read as `(offset, length asked)`.

    `count(asked, filled)` gives what `read_into` returns (the count filled, by default).
    """

    def __init__(self, data: bytes, size=None, count=None):
        self.data = memoryview(data)  # (slices of it copy nothing)
        self.size = len(data) if size is None else size
        self.count = count
        self.reads: list[tuple[int, int]] = []

    def read_into(self, offset, buffer):
        self.reads.append((offset, len(buffer)))
        chunk = self.data[offset : offset + len(buffer)]
        buffer[: len(chunk)] = chunk
        return len(chunk) if self.count is None else self.count(len(buffer), len(chunk))


class TrickleFile(io.BytesIO):
    """A file object whose `readinto` fills at most `step` bytes per call (a raw file, a socket)."""

    def __init__(self, data: bytes, step: int = 7):
        super().__init__(data)
        self.step = step
        self.calls = 0

    def readinto(self, buffer):
        self.calls += 1
        return super().readinto(memoryview(buffer)[: self.step])


def leaf(path, shape, offset=0, nbytes=0, dtype="float32"):
    return {"path": path, "kind": "numpy", "dtype": dtype, "shape": shape, "offset": offset,
            "nbytes": nbytes}  # fmt: skip


SMALL = eqx_msg.dumps({"a": np.arange(16, dtype=np.float32), "b": np.arange(6.0).reshape(2, 3)})
# A file past the first read (64 KiB), so that its leaves take reads of their own.
BIG_TREE = {"w": np.arange(40000, dtype=np.float32), "v": np.arange(30000, dtype=np.int32)}
BIG = eqx_msg.dumps(BIG_TREE)


# 1. Sources that lie about what they read.


COUNTS = {
    "one more than asked": lambda asked, filled: asked + 1,
    "one fewer than asked": lambda asked, filled: asked - 1,
    "zero": lambda asked, filled: 0,
    "negative": lambda asked, filled: -1,
    "huge": lambda asked, filled: 2**70,
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_a_read_count_that_is_not_what_was_asked_is_a_length_error(name):
    count = COUNTS[name]
    with pytest.raises(eqx_msg.LengthError, match="bytes at offset 0 gave|returned"):
        eqx_msg.open(Source(SMALL, count=count))
    # The same lie on a leaf's read, after an honest open: refused there, and by verify.
    source = Source(BIG)
    reader = eqx_msg.open(source)
    source.count = count
    for read in (lambda: reader["['w']"], lambda: reader.slice("['v']")[3:9], reader.verify):
        with pytest.raises(eqx_msg.LengthError):
            read()
    source.count = None  # honest again: the reader was not left broken
    assert np.array_equal(reader["['w']"], BIG_TREE["w"])
    reader.verify()


def test_a_count_is_an_integer_numpy_ones_included_and_anything_else_a_type_error():
    source = Source(BIG, count=lambda asked, filled: np.int64(filled))
    with eqx_msg.open(source) as reader:
        assert np.array_equal(reader["['v']"], BIG_TREE["v"])
    for count in (float, str, lambda n: n + 0.25, lambda n: False, lambda n: True):
        with pytest.raises(TypeError, match="not a count of bytes"):
            eqx_msg.open(Source(BIG, count=lambda asked, filled, c=count: c(filled)))


def test_none_from_read_into_counts_as_nothing_read():
    # (never trusted as a full read: the buffer would hold whatever memory held before)
    with pytest.raises(eqx_msg.LengthError, match="gave 0"):
        eqx_msg.open(Source(BIG, count=lambda asked, filled: None))


def test_a_source_that_ends_early_or_says_so_late_is_refused_at_the_read_that_meets_it():
    # The size says the whole file; the data stops inside the second leaf.
    cut = BIG[: len(BIG) - 1000]
    source = Source(cut, size=len(BIG))
    reader = eqx_msg.open(source)
    assert np.array_equal(reader["['w']"], BIG_TREE["w"])  # before the cut: fine
    with pytest.raises(eqx_msg.LengthError, match="ended before its size"):
        reader["['v']"]
    with pytest.raises(eqx_msg.LengthError, match="ended before its size"):
        reader.verify()
    with pytest.raises(eqx_msg.LengthError):
        eqx_msg.load(Source(cut, size=len(BIG)))
    with pytest.raises(eqx_msg.LengthError):
        eqx_msg.verify(Source(cut, size=len(BIG)))


class Flaky(Source):
    """Raises `OSError` on the reads whose numbers (from 0) are in `fail`."""

    def __init__(self, data, fail):
        super().__init__(data)
        self.fail = set(fail)

    def read_into(self, offset, buffer):
        n = len(self.reads)
        result = super().read_into(offset, buffer)
        if n in self.fail:
            buffer[:] = b"\xff" * len(buffer)  # (what a half-finished read leaves behind)
            raise OSError(f"connection reset on read {n}")
        return result


def test_a_source_s_own_error_propagates_and_leaves_nothing_half_read_behind():
    with pytest.raises(OSError, match="read 0"):
        eqx_msg.open(Flaky(BIG, {0}))
    source = Flaky(BIG, {1, 3})
    reader = eqx_msg.open(source)
    with pytest.raises(OSError, match="read 1"):
        reader["['w']"]
    assert np.array_equal(reader["['w']"], BIG_TREE["w"])  # read again, not cached damaged
    with pytest.raises(OSError, match="read 3"):
        reader.verify()
    reader.verify()
    assert np.array_equal(reader.slice("['v']")[-5:], BIG_TREE["v"][-5:])


def test_a_file_object_that_fills_a_few_bytes_per_call_is_read_whole():
    f = TrickleFile(SMALL)
    tree = eqx_msg.load(f)
    assert np.array_equal(tree["a"], np.arange(16, dtype=np.float32))
    assert f.calls >= len(SMALL) // 7  # (the loop went on until each buffer was full)
    eqx_msg.verify(TrickleFile(SMALL, step=1))


@pytest.mark.parametrize("result", ["more", "none", "zero"])
def test_a_file_object_whose_readinto_lies_is_a_length_error(result):
    class Lying(io.BytesIO):
        def readinto(self, buffer):
            n = super().readinto(buffer)
            return {"more": n + 10, "none": None, "zero": 0}[result]

    with pytest.raises(eqx_msg.LengthError):
        eqx_msg.open(Lying(SMALL))


def test_a_file_object_that_cannot_seek_raises_its_own_os_error():
    read, write = os.pipe()
    os.write(write, SMALL)
    os.close(write)
    with os.fdopen(read, "rb") as pipe, pytest.raises(OSError, match="seek"):
        eqx_msg.open(pipe)


def test_load_with_verify_checks_a_source_before_returning():
    damaged = bytearray(BIG)
    damaged[-3] ^= 1
    with pytest.raises(eqx_msg.ChecksumError) as info:
        eqx_msg.load(Source(bytes(damaged)), verify=True)
    last = max(eqx_msg.header(BIG).leaves, key=lambda record: record.offset)
    assert info.value.paths == [last.path]
    assert np.array_equal(eqx_msg.load(Source(BIG), verify=True)["v"], BIG_TREE["v"])


# 2. Sources that lie about their size.


@pytest.mark.parametrize(
    "size", [True, False, -1, -(2**63), 1.0 * len(SMALL), "384", None, np.float64(len(SMALL))]
)
def test_a_size_that_is_not_a_length_is_a_type_error_naming_size(size):
    source = Source(SMALL)
    source.size = size
    with pytest.raises(TypeError, match="size"):
        eqx_msg.open(source)
    method = Source(SMALL)
    method.size = lambda: size
    with pytest.raises(TypeError, match="size"):
        eqx_msg.header(method)
    assert source.reads == method.reads == []


@pytest.mark.parametrize("delta", [-1, 1, 64, -len(SMALL) + 16, 2**63, 2**70])
def test_a_size_other_than_the_data_s_is_a_length_error(delta):
    for entry in (eqx_msg.open, eqx_msg.header, eqx_msg.load, eqx_msg.verify):
        source = Source(SMALL, size=len(SMALL) + delta)
        with pytest.raises(eqx_msg.LengthError):
            entry(source)
        assert len(source.reads) <= 2 and all(n <= 64 << 10 for _, n in source.reads)


@pytest.mark.parametrize("size", [0, 1, 15])
def test_a_size_too_small_for_a_prefix_is_refused_without_a_read(size):
    source = Source(SMALL[:size])
    with pytest.raises(eqx_msg.LengthError, match="too short"):
        eqx_msg.open(source)
    assert source.reads == []


def test_size_may_be_a_method_or_len_and_is_asked_once():
    class Sized:
        def __init__(self, data):
            self.data, self.asked = data, 0

        def size(self):
            self.asked += 1
            return len(self.data)

        def read_into(self, offset, buffer):
            chunk = self.data[offset : offset + len(buffer)]
            buffer[: len(chunk)] = chunk
            return len(chunk)

    class WithLen(Sized):
        size = None

        def __len__(self):
            return len(self.data)

    sized = Sized(BIG)
    with eqx_msg.open(sized) as reader:
        assert np.array_equal(reader["['v']"], BIG_TREE["v"])
        reader.verify()
    assert sized.asked == 1
    assert np.array_equal(eqx_msg.load(WithLen(BIG))["w"], BIG_TREE["w"])


# 3. Hostile files through a source: what opening may read and allocate.


def _traced(fn):
    """(peak bytes traced by tracemalloc while `fn` runs, its exception or None)."""
    tracemalloc.start()
    try:
        fn()
        error = None
    except eqx_msg.EqxMsgError as err:
        error = err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize("header_len", [256 << 20, (256 << 20) + 1, 2**63, 2**64 - 1])
def test_a_prefix_claiming_a_huge_header_on_a_small_source_costs_one_small_read(header_len):
    data = SMALL[:8] + struct.pack("<Q", header_len) + SMALL[16:]
    source = Source(data)
    peak, error = _traced(lambda: eqx_msg.open(source))
    assert isinstance(error, eqx_msg.FormatError | eqx_msg.LimitError), error
    assert source.reads == [(0, len(data))]
    assert peak < 1 << 20


def test_a_header_claiming_huge_leaves_is_refused_before_any_data_is_read():
    for shape, nbytes in (([2**40], 2**42), ([2**61, 8], 2**64 - 64), ([1], 2**63)):
        data = hostile.file({"t": "list", "c": [0]}, [leaf("[0]", shape, 0, nbytes)], bytes(64))
        source = Source(data)
        peak, error = _traced(lambda s=source: eqx_msg.open(s))
        assert isinstance(error, eqx_msg.EqxMsgError), (shape, error)
        assert source.reads == [(0, len(data))] and peak < 1 << 20


def test_an_alignment_of_1_mib_is_read_in_three_reads_and_its_padding_checked():
    data = eqx_msg.dumps({"a": np.ones(3), "b": np.ones(5)}, alignment=1 << 20)
    source = Source(data)
    with eqx_msg.open(source) as reader:
        assert len(source.reads) == 2 and sum(n for _, n in source.reads) == 1 << 20
        loaded = reader.load()
        assert np.array_equal(loaded["b"], np.ones(5))
    # Leaves 1 MiB apart: one read each, of their own bytes only.
    assert [n for _, n in source.reads[2:]] == [24, 40]
    damaged = bytearray(data)
    damaged[(1 << 20) - 7] = 9
    with pytest.raises(eqx_msg.ChecksumError, match="padding"):
        eqx_msg.open(Source(bytes(damaged)))


def test_many_tiny_leaves_are_few_reads_each_byte_read_once():
    tree = {f"k{i:05d}": np.full(3, i, np.int16) for i in range(6000)}
    data = eqx_msg.dumps(tree)
    assert len(data) > 4 * (64 << 10)
    source = Source(data)
    with eqx_msg.open(source) as reader:
        loaded = reader.load()
        assert all(np.array_equal(loaded[k], v) for k, v in list(tree.items())[::397])
        # A filter of every other leaf: gaps are 64 bytes, so still one read for the data.
        source.reads.clear()
        half = reader.load(filter=lambda path: int(path[3:8]) % 2 == 0)
        assert np.array_equal(half["k05998"], tree["k05998"])
        assert len(source.reads) == 1
    covered = sorted(source.reads)
    assert all(a + n <= b for (a, n), (b, _) in zip(covered, covered[1:]))  # no byte twice


def test_verify_streams_a_large_source_in_bounded_memory():
    data = eqx_msg.dumps({"z": np.zeros(10 << 20, np.float32)})  # 40 MiB
    source = Source(data)
    reader = eqx_msg.open(source)
    source.reads.clear()
    peak, error = _traced(reader.verify)
    assert error is None
    assert peak < (16 << 20) + (2 << 20)  # one 16 MiB chunk, not the 40 MiB section
    assert len(source.reads) == 3 and sum(n for _, n in source.reads) <= len(data)
    # A slice of it reads only its rows.
    source.reads.clear()
    assert np.array_equal(reader.slice("['z']")[5:9], np.zeros(4, np.float32))
    assert [n for _, n in source.reads] == [16]


# 4. A source whose bytes change under the reader.


class Changing(Source):
    """Gives `data` for the first `honest` reads, then the same bytes with every data byte
    flipped (the file replaced in place while it is open)."""

    def __init__(self, data, honest):
        super().__init__(data)
        self.honest = honest
        with eqx_msg.open(data) as reader:
            start = reader._file.data_start
        self.changed = memoryview(data[:start] + bytes(b ^ 0x5A for b in data[start:]))

    def read_into(self, offset, buffer):
        if len(self.reads) >= self.honest:
            self.data = self.changed
        return super().read_into(offset, buffer)


def test_bytes_that_change_after_open_never_change_the_header_and_verify_names_them():
    source = Changing(BIG, honest=1)
    reader = eqx_msg.open(source)
    keys, header = reader.keys(), reader.header
    got = reader["['w']"]  # the changed bytes: data is read as it is now, with its shape
    assert got.shape == BIG_TREE["w"].shape and not np.array_equal(got, BIG_TREE["w"])
    with pytest.raises(eqx_msg.ChecksumError) as info:
        reader.verify()
    assert sorted(info.value.paths) == ["['v']", "['w']"]
    assert reader.keys() == keys and reader.header == header


def test_a_small_file_s_leaves_come_from_the_one_read_made_at_open():
    source = Changing(SMALL, honest=1)
    with eqx_msg.open(source) as reader:
        assert np.array_equal(reader["['a']"], np.arange(16, dtype=np.float32))
        assert len(source.reads) == 1
        with pytest.raises(eqx_msg.ChecksumError):
            reader.verify()  # verify reads again, and sees the change


# 5. Row slices on odd shapes and dtypes, against numpy on the same array.


KEYS = jax.random.split(jax.random.key(3), 6)
ODD = {
    "row": np.arange(7, dtype=np.int16).reshape(1, 7),
    "col": np.arange(5, dtype=np.float64).reshape(5, 1),
    "empty_rows": np.zeros((0, 4), np.float32),
    "empty_cols": np.zeros((9, 0, 2), np.float32),
    "many_empty": np.zeros((1 << 40, 0), np.int8),
    "int4": jnp.arange(-8, 7, dtype=jnp.int4).reshape(5, 3),
    "uint2": np.arange(14, dtype=np.uint8).reshape(7, 2).astype(ml_dtypes.uint2),
    "int4_odd": jnp.arange(-3, 4, dtype=jnp.int4),
    "bf16": jnp.linspace(-2, 2, 24, dtype=jnp.bfloat16).reshape(4, 3, 2),
    "f8": np.linspace(-1, 1, 10).astype(ml_dtypes.float8_e4m3fn).reshape(10, 1),
    "bool": np.arange(12).reshape(3, 4) % 3 == 0,
    "keys": KEYS,
    "one_key": jax.random.key(9),
    "c64": (np.arange(6) * (1 + 1j)).astype(np.complex64).reshape(3, 2),
}
ODD_DATA = eqx_msg.dumps(ODD)
ODD_MAPPED = eqx_msg.open(ODD_DATA)
ODD_ARRAYS = {k: np.asarray(ODD_MAPPED[f"['{k}']"]) for k in ODD}


def _index(shape):
    n = shape[0] if shape else 1
    first = st.one_of(
        st.integers(-n - 1, n),
        st.integers(-n - 1, n).map(np.int64),
        st.integers(0, n).map(np.uint8 if n < 256 else np.int64),
        st.slices(n + 2),
        st.lists(st.integers(-n, n - 1), max_size=4) if n else st.just([]),
        hnp.arrays(bool, n) if n < 64 else st.just(Ellipsis),
        st.sampled_from([Ellipsis, None, True, False, np.bool_(True)]),
    )
    rest = hnp.basic_indices(shape[1:], allow_ellipsis=True, allow_newaxis=True) if shape else ()
    return st.one_of(
        first,
        st.tuples(first, rest if shape else st.just(())).map(
            lambda t: (t[0], *(t[1] if isinstance(t[1], tuple) else (t[1],)))
        ),
        hnp.basic_indices(shape, allow_ellipsis=True, allow_newaxis=True) if shape else st.just(()),
        st.just((np.newaxis, Ellipsis)),
    )


@st.composite
def _key_and_index(draw):
    key = draw(st.sampled_from(list(ODD)))
    return key, draw(_index(ODD_ARRAYS[key].shape))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_key_and_index())
def test_a_slice_of_any_odd_leaf_through_a_source_is_numpy_s_answer(case):
    key, index = case
    whole = ODD_ARRAYS[key]
    source = Source(ODD_DATA)
    sliced = eqx_msg.open(source).slice(f"['{key}']")
    source.reads.clear()
    try:
        expected = whole[index]
    except IndexError:
        with pytest.raises(IndexError):
            sliced[index]
        with pytest.raises(IndexError):
            ODD_MAPPED.slice(f"['{key}']")[index]
        return
    got = sliced[index]
    assert got.dtype == whole.dtype and got.shape == np.shape(expected), (key, index)
    assert np.array_equal(got, expected, equal_nan=True), (key, index)
    assert np.array_equal(ODD_MAPPED.slice(f"['{key}']")[index], expected, equal_nan=True)
    nbytes = next(r.nbytes for r in ODD_MAPPED.header.leaves if r.path == f"['{key}']")
    assert len(source.reads) <= 1 and sum(n for _, n in source.reads) <= nbytes


def test_a_slice_reads_only_its_rows_even_of_a_file_past_the_first_read():
    source = Source(BIG)
    reader = eqx_msg.open(source)
    source.reads.clear()
    rows = reader.slice("['v']")
    assert np.array_equal(rows[np.int64(-1)], BIG_TREE["v"][-1])
    assert np.array_equal(rows[29990:10:-3], BIG_TREE["v"][29990:10:-3])
    assert np.array_equal(rows[[5, 29999, 5]], BIG_TREE["v"][[5, 29999, 5]])
    sizes = [n for _, n in source.reads]
    assert sizes == [4, (29990 - 11 + 1) * 4, 29995 * 4]
    with pytest.raises(IndexError):
        rows[30000]
    with pytest.raises(IndexError):
        rows[np.int64(-30001)]


# 6. Closing, and two threads.


def test_a_closed_reader_reads_nothing_through_any_way_in():
    source = Source(BIG)
    reader = eqx_msg.open(source)
    kept = reader["['w']"]
    rows = reader.slice("['v']")
    reader.close()
    reader.close()  # twice is fine
    source.reads.clear()
    for read in (
        lambda: reader["['w']"],
        lambda: reader.get("['v']"),
        lambda: reader.slice("['v']"),
        lambda: rows[0],
        lambda: rows[()],
        reader.load,
        lambda: reader.load(filter=lambda path: False),
        reader.verify,
    ):
        with pytest.raises(eqx_msg.ClosedError):
            read()
    assert source.reads == []
    assert np.array_equal(kept, BIG_TREE["w"])  # what was read stays good
    assert reader.keys() == eqx_msg.open(BIG).keys() and reader.header.leaves
    assert "closed" in repr(reader)


def test_two_threads_reading_one_read_into_source_get_the_right_bytes():
    tree = {f"w{i}": np.full(20000, i, np.float32) for i in range(6)}
    source = Source(eqx_msg.dumps(tree))
    reader = eqx_msg.open(source)
    wrong: list[str] = []

    def work(keys):
        for _ in range(40):
            for k in keys:
                if not np.array_equal(reader[f"['{k}']"], tree[k]):
                    wrong.append(k)
                if not np.array_equal(reader.slice(f"['{k}']")[7:9], tree[k][7:9]):
                    wrong.append(k)
            reader.verify()

    threads = [
        threading.Thread(target=work, args=(keys,)) for keys in (list(tree), list(tree)[::-1])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


@pytest.mark.parametrize("kind", ["a file on disk (preadv)", "BytesIO (seek + readinto)"])
def test_two_threads_sharing_one_file_object_get_the_right_bytes(kind, tmp_path):
    # (seek + readinto from two threads interleaved: leaves came back holding another's bytes)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: an unlocked seek + readinto races
    tree = {f"w{i}": np.full(40000, i, np.float32) for i in range(8)}
    path = tmp_path / "t.eqx"
    path.write_bytes(eqx_msg.dumps(tree))
    with open(path, "rb") as on_disk:
        f = on_disk if kind.startswith("a file") else io.BytesIO(path.read_bytes())
        reader = eqx_msg.open(f)
        wrong: list[str] = []

        def work(keys):
            for _ in range(60):
                for k in keys:
                    if not np.array_equal(reader[f"['{k}']"], tree[k]):
                        wrong.append(k)

        threads = [
            threading.Thread(target=work, args=(keys,))
            for keys in (list(tree)[:4], list(tree)[:3:-1])
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(switch)
        assert wrong == []


def test_a_file_object_whose_readinto_returns_a_negative_count_is_refused_not_looped_on():
    class Negative(io.BytesIO):
        def readinto(self, buffer):
            return -1

    with pytest.raises(eqx_msg.LengthError, match="returned -1"):
        eqx_msg.open(Negative(BIG))


@pytest.mark.parametrize("size", [2**63, 2**64, 2**70])
def test_a_size_no_file_has_is_a_length_error(size):
    with pytest.raises(eqx_msg.LengthError, match="no file's"):
        eqx_msg.open(Source(BIG, size=size))


def test_an_empty_leaf_inside_another_leaf_s_bytes_reads_as_from_the_map():
    leaves = [leaf("[0]", [256], 0, 1024), leaf("[1]", [0], 512, 0), leaf("[2]", [4], 1024, 16)]
    data = hostile.file({"t": "list", "c": [0, 1, 2]}, leaves, bytes(1088))
    mapped = eqx_msg.loads(data)
    for source in (Source(data), io.BytesIO(data)):
        got = eqx_msg.load(source)
        assert [x.shape for x in got] == [x.shape for x in mapped] == [(256,), (0,), (4,)]
    big = [leaf("[0]", [1 << 16], 0, 1 << 18), leaf("[1]", [0], 1 << 17, 0)]  # past the head
    data = hostile.file({"t": "list", "c": [0, 1]}, big, bytes(1 << 18))
    assert [x.shape for x in eqx_msg.load(Source(data))] == [(1 << 16,), (0,)]


@pytest.mark.parametrize("index", [(), Ellipsis, None, np.newaxis, (None, ...)])
def test_a_slice_of_a_0d_leaf_is_numpy_s_answer(index):
    data = eqx_msg.dumps({"s": np.float32(3.5), "k": jax.random.key(0)})
    for source in (data, Source(data)):
        with eqx_msg.open(source) as reader:
            got = reader.slice("['s']")[index]
            assert (
                np.array_equal(got, np.float32(3.5)[index])
                and got.shape == np.float32(3.5)[index].shape
            )
            with pytest.raises(IndexError):
                reader.slice("['s']")[0]


# 7. Any lying source, fuzzed: a lie somewhere means a LengthError; no lie, the right data.


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0, 0, 0, -1, 1, 7, -(2**40)]), min_size=1, max_size=8))
def test_any_pattern_of_lies_is_a_length_error_and_honest_reads_give_the_file(lies):
    def count(asked, filled):
        lie = lies[(len(source.reads) - 1) % len(lies)]
        told.append(lie)
        return filled + lie

    told: list[int] = []
    source = Source(BIG, count=count)
    try:
        with eqx_msg.open(source) as reader:
            got = {k: reader[f"['{k}']"] for k in BIG_TREE}
            reader.verify()
    except eqx_msg.LengthError:
        assert told[-1] != 0  # the read that lied is the one refused
        return
    assert not any(told)
    assert all(np.array_equal(got[k], v) for k, v in BIG_TREE.items())
    # The head once, each leaf once, then every data byte once more for verify.
    assert math.fsum(n for _, n in source.reads) <= (64 << 10) + 2 * len(BIG)
