"""Sources that are not mapped (file objects, `read_into` objects): opening reads the prefix and
header only, and each access reads exactly the byte ranges it needs, into aligned buffers."""

import io
import struct

import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eqx_msg

from conftest import frame, reframe


class CountingFile(io.BytesIO):
    """A file object that records every read as `(offset, length)`."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def readinto(self, buffer):
        offset = self.tell()
        n = super().readinto(buffer)
        self.reads.append((offset, n))
        return n


class RangeObject:
    """The `read_into` protocol, as an object-store client would give it."""

    def __init__(self, data: bytes, size="attribute"):
        self._data = data
        self.reads: list[tuple[int, int]] = []
        if size == "attribute":
            self.size = len(data)
        elif size == "method":
            self.size = lambda: len(data)

    def read_into(self, offset, buffer):
        chunk = self._data[offset : offset + len(buffer)]
        buffer[: len(chunk)] = chunk
        self.reads.append((offset, len(chunk)))
        return len(chunk)


BIG = np.arange(64 * 1024, dtype=np.float32).reshape(256, 256)  # 256 KiB: past the first read
TREE = {
    "model": eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0)),
    "big": BIG,
    "key": jax.random.key(1),
    "int4": jnp.arange(-8, 8, dtype=jnp.int4).reshape(4, 4),
    "small": [np.full((16,), i, np.int32) for i in range(50)],
    "after": jnp.ones((300, 100)),  # a jax leaf
}
DATA = eqx_msg.dumps(TREE, metadata={"step": 3})


def _record(data, path):
    return next(leaf for leaf in eqx_msg.header(data).leaves if leaf.path == path)


def _data_start(data):
    with eqx_msg.open(data) as reader:
        return reader._file.data_start


def test_opening_reads_the_head_once_and_every_method_agrees_with_the_map():
    f = CountingFile(DATA)
    reader = eqx_msg.open(f)
    assert f.reads == [(0, 64 << 10)]  # the prefix, header and padding in one read
    mapped = eqx_msg.open(DATA)
    assert reader.keys() == mapped.keys()
    assert reader.header == mapped.header
    assert reader.metadata == {"step": 3}
    assert reader.specs() == mapped.specs()
    assert eqx.tree_equal(reader.abstract(), mapped.abstract())
    assert len(f.reads) == 1  # none of those read data
    for key in reader:
        assert np.array_equal(reader[key], mapped[key])
    assert eqx.tree_equal(reader.load(), TREE)
    assert repr(reader).startswith("<eqx_msg.Reader '<CountingFile>'")


def test_one_leaf_is_one_read_of_exactly_its_bytes_into_an_aligned_buffer():
    f = CountingFile(DATA)
    reader = eqx_msg.open(f)
    f.reads.clear()
    record = _record(DATA, "['big']")
    got = reader["['big']"]
    assert f.reads == [(_data_start(DATA) + record.offset, BIG.nbytes)]
    assert np.array_equal(got, BIG)
    assert got.ctypes.data % 64 == 0
    assert not got.flags.writeable
    f.reads.clear()
    placed = reader.get("['after']")
    assert isinstance(placed, jax.Array)
    assert np.array_equal(placed, TREE["after"])
    assert f.reads == [(_data_start(DATA) + _record(DATA, "['after']").offset, 300 * 100 * 4)]


ROW_INDEXES = [
    np.s_[10:20],
    np.s_[10:20:3, 5],
    np.s_[::-7],
    np.s_[-1],
    np.s_[[5, 3, 200]],
    np.s_[np.arange(256) % 7 == 0],
    np.s_[250:999],
    np.s_[5:5],
    np.s_[..., 3],
    np.s_[3, ::2],
    np.s_[:, 0, None],
    (),
]


@pytest.mark.parametrize("index", ROW_INDEXES, ids=range(len(ROW_INDEXES)))
def test_a_slice_reads_only_the_rows_it_selects(index):
    f = CountingFile(DATA)
    reader = eqx_msg.open(f)
    f.reads.clear()
    got = reader.slice("['big']")[index]
    assert np.array_equal(got, BIG[index])
    assert np.array_equal(eqx_msg.open(DATA).slice("['big']")[index], BIG[index])
    start = _data_start(DATA) + _record(DATA, "['big']").offset
    rows = np.arange(256)[index[0] if isinstance(index, tuple) and index else index]
    if isinstance(index, tuple) and (not index or index[0] is Ellipsis):
        assert f.reads == [(start, BIG.nbytes)]  # every row asked for
    elif np.size(rows) == 0:
        assert f.reads == []
    else:
        low, high = int(np.min(rows)), int(np.max(rows)) + 1
        assert f.reads == [(start + low * 1024, (high - low) * 1024)]


SHAPE = (23, 5, 3)
CUBE = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
CUBE_DATA = eqx_msg.dumps({"c": CUBE})
_first_axis = st.one_of(
    st.integers(-23, 22),
    st.slices(23),
    st.lists(st.integers(-23, 22), max_size=6),
    hnp.arrays(bool, 23),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        hnp.basic_indices(SHAPE, allow_ellipsis=True, allow_newaxis=True),
        st.tuples(_first_axis, hnp.basic_indices(SHAPE[1:], allow_ellipsis=False)).map(
            lambda t: (t[0], *(t[1] if isinstance(t[1], tuple) else (t[1],)))
        ),
        _first_axis,
    )
)
def test_any_index_into_a_slice_is_numpy_s_answer_from_only_the_rows_it_touches(index):
    f = CountingFile(CUBE_DATA)
    reader = eqx_msg.open(f)
    f.reads.clear()
    try:
        expected = CUBE[index]
    except IndexError:
        with pytest.raises(IndexError):
            reader.slice("['c']")[index]
        return
    got = reader.slice("['c']")[index]
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert np.array_equal(eqx_msg.open(CUBE_DATA).slice("['c']")[index], expected)
    # Never more than one read, and never of more bytes than the leaf has.
    assert len(f.reads) <= 1 and sum(n for _, n in f.reads) <= CUBE.nbytes


def test_a_slice_of_a_packed_leaf_reads_the_leaf_and_slices_it():
    reader = eqx_msg.open(CountingFile(DATA))
    assert np.array_equal(reader.slice("['int4']")[1:3], np.asarray(TREE["int4"])[1:3])
    with pytest.raises(IndexError):
        reader.slice("['big']")[256]


def test_a_filtered_load_reads_only_what_it_selects_and_coalesces_small_leaves():
    f = CountingFile(DATA)
    reader = eqx_msg.open(f)
    f.reads.clear()
    loaded = reader.load(filter=lambda path: path.startswith("['small']"))
    assert all(np.array_equal(a, b) for a, b in zip(loaded["small"], TREE["small"]))
    assert isinstance(loaded["big"], jax.ShapeDtypeStruct)
    # 50 adjacent 64-byte leaves: one read, of exactly their span.
    records = [_record(DATA, f"['small'][{i}]") for i in range(50)]
    first, last = records[0], records[-1]
    start = _data_start(DATA) + first.offset
    assert f.reads == [(start, last.offset + last.nbytes - first.offset)]


def test_leaves_far_apart_or_large_are_separate_reads():
    tree = {"a": np.ones(1 << 20, np.float32), "b": np.ones(4 << 20, np.float32), "c": np.ones(8)}
    data = eqx_msg.dumps(tree)
    f = CountingFile(data)
    reader = eqx_msg.open(f)
    f.reads.clear()
    reader.load(filter=lambda path: path in ("['a']", "['c']"))  # 16 MiB apart
    assert [n for _, n in f.reads] == [4 << 20, 64]
    f.reads.clear()
    reader.load()
    assert [n for _, n in f.reads] == [4 << 20, 16 << 20, 64]  # 16 MiB + 64 bytes pass the cap


def test_a_small_file_is_read_once_in_all():
    data = eqx_msg.dumps({"w": np.arange(10.0), "b": jnp.ones(3)})
    f = CountingFile(data)
    tree = eqx_msg.load(f)
    assert np.array_equal(tree["w"], np.arange(10.0))
    assert f.reads == [(0, len(data))]


def test_a_header_past_the_first_read_takes_a_second_read_and_no_more():
    tree = {f"leaf_{i:05d}": np.zeros(1, np.int8) for i in range(3000)}
    data = eqx_msg.dumps(tree)
    header_len = struct.unpack("<Q", data[8:16])[0]
    assert header_len > 64 << 10
    f = CountingFile(data)
    reader = eqx_msg.open(f)
    assert f.reads == [(0, 64 << 10), (64 << 10, 16 + header_len + 4096 - (64 << 10))]
    assert len(reader.keys()) == 3000


def test_a_large_alignment_reads_its_header_padding_and_checks_it():
    data = eqx_msg.dumps({"w": np.ones(4)}, alignment=1 << 20)
    f = CountingFile(data)
    eqx_msg.open(f)
    assert len(f.reads) == 2 and sum(n for _, n in f.reads) == 1 << 20
    damaged = bytearray(data)
    damaged[(1 << 20) - 1] = 1  # the last byte of the header padding
    for source in (bytes(damaged), CountingFile(bytes(damaged))):
        with pytest.raises(eqx_msg.ChecksumError, match="padding"):
            eqx_msg.open(source)


@pytest.mark.parametrize("size", ["attribute", "method"])
def test_an_object_with_read_into_is_a_source(size):
    source = RangeObject(DATA, size)
    with eqx_msg.open(source) as reader:
        assert np.array_equal(reader["['big']"], BIG)
        assert source.reads[0] == (0, 64 << 10)
        assert eqx.tree_equal(reader.load(), TREE)
        reader.verify()
    assert eqx.tree_equal(eqx_msg.load(RangeObject(DATA)), TREE)
    assert eqx_msg.header(RangeObject(DATA)) == eqx_msg.header(DATA)


def test_a_source_needs_a_size_and_binary_mode(tmp_path):
    with pytest.raises(TypeError, match="size"):
        eqx_msg.open(RangeObject(DATA, size=None))
    path = tmp_path / "m.eqx"
    path.write_bytes(DATA)
    with open(path) as text, pytest.raises(TypeError, match="'rb'"):
        eqx_msg.open(text)
    with open(path, "rb") as f:
        assert eqx.tree_equal(eqx_msg.load(f), TREE)
        assert not f.closed  # the caller's file


def test_a_source_that_ends_before_its_size_is_a_length_error():
    short = RangeObject(DATA)
    short._data = DATA[: len(DATA) - 100]
    reader = eqx_msg.open(short)
    with pytest.raises(eqx_msg.LengthError, match="ended before its size"):
        reader["['after']"]


def test_a_closed_reader_reads_nothing_and_leaves_the_file_open():
    f = CountingFile(DATA)
    reader = eqx_msg.open(f)
    rows = reader.slice("['big']")
    reader.close()
    f.reads.clear()
    with pytest.raises(eqx_msg.ClosedError):
        reader["['big']"]
    with pytest.raises(eqx_msg.ClosedError):
        rows[0]
    with pytest.raises(eqx_msg.ClosedError):
        reader.verify()
    assert f.reads == [] and not f.closed
    assert reader.keys()  # the header stays readable


def test_verify_streams_a_source_and_names_what_the_map_names():
    assert eqx_msg.verify(CountingFile(DATA)) is None
    start = _data_start(DATA)
    for position, where in [
        (start + _record(DATA, "['big']").offset + 5, "['big']"),
        (start + _record(DATA, "['small'][7]").offset, "['small'][7]"),
        (start + _record(DATA, "['int4']").offset + 20, None),  # the padding after its 8 bytes
        (len(DATA) - 1, "['after']"),
    ]:
        damaged = bytearray(DATA)
        damaged[position] ^= 0x10
        errors = []
        for source in (bytes(damaged), CountingFile(bytes(damaged)), RangeObject(bytes(damaged))):
            with pytest.raises(eqx_msg.ChecksumError) as info:
                eqx_msg.verify(source)
            errors.append((str(info.value), info.value.paths))
        assert errors[0] == errors[1] == errors[2]
        if where is None:
            assert "padding" in errors[0][0]
        else:
            assert errors[0][1] == [where]
    old = reframe(DATA, lambda header: None)
    with pytest.raises(eqx_msg.ChecksumError, match="no checksums"):
        eqx_msg.verify(CountingFile(old))


GOOD = eqx_msg.dumps({"a": np.arange(16, dtype=np.float32)})
DAMAGED = {
    "empty": b"",
    "magic": b"NOTEQX" + GOOD[6:],
    "truncated-prefix": GOOD[:10],
    "truncated-header": GOOD[:40],
    "truncated-data": GOOD[:-1],
    "trailing": GOOD + b"\x00",
    "version": GOOD[:6] + struct.pack("<H", 9) + GOOD[8:],
    "header-len-huge": GOOD[:8] + struct.pack("<Q", 2**64 - 1) + GOOD[16:],
    "header-len-lies": GOOD[:8] + struct.pack("<Q", len(GOOD)) + GOOD[16:],
    "garbage-header": GOOD[:16] + b"\xc1" * 40 + GOOD[56:],
    "header-bit": GOOD[:30] + bytes([GOOD[30] ^ 4]) + GOOD[31:],
    "overlap": frame(
        {
            "format": "eqx_msg",
            "version": 1,
            "alignment": 64,
            "data_nbytes": 64,
            "leaves": [
                {
                    "path": f"[{i}]",
                    "kind": "numpy",
                    "dtype": "float32",
                    "shape": [4],
                    "offset": 0,
                    "nbytes": 16,
                }
                for i in range(2)
            ],
            "tree": {"t": "list", "c": [0, 1]},
            "metadata": None,
            "writer": {},
        },
        bytes(64),
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_file_gets_the_same_verdict_from_every_source(name):
    data = DAMAGED[name]
    verdicts = []
    for source in (data, CountingFile(data), RangeObject(data)):
        with pytest.raises(eqx_msg.EqxMsgError) as info:
            eqx_msg.open(source)
        verdicts.append(type(info.value))
        with pytest.raises(type(info.value)):
            eqx_msg.header(source)
    with pytest.raises(eqx_msg.EqxMsgError) as info:
        eqx_msg.loads(data)
    verdicts.append(type(info.value))
    assert len(set(verdicts)) == 1, verdicts


def test_a_header_longer_than_the_source_is_refused_after_the_first_read():
    data = bytearray(eqx_msg.dumps({"w": np.ones(1 << 20)}))  # 8 MiB
    data[8:16] = struct.pack("<Q", 200 << 20)  # a 200 MiB header
    f = CountingFile(bytes(data))
    with pytest.raises(eqx_msg.LengthError, match="truncated header") as ranged:
        eqx_msg.open(f)
    assert f.reads == [(0, 64 << 10)]
    with pytest.raises(eqx_msg.LengthError) as mapped:
        eqx_msg.open(bytes(data))
    assert str(ranged.value) == str(mapped.value)  # the core's one verdict


def test_threads_sharing_one_data_verifier_never_deadlock():
    # (the binding took the verifier's lock, then released the GIL: a second thread waiting for
    # the lock with the GIL held stopped both)
    import threading

    data = eqx_msg.dumps({"w": np.zeros(8 << 20, np.uint8)})
    with eqx_msg.open(data) as reader:
        header = reader._file.header
    verifier = header.verifier()
    section = np.frombuffer(data, np.uint8)[header.data_start :]
    pieces = np.array_split(section, 8)

    def feed(piece):
        for chunk in np.array_split(piece, 16):
            verifier.feed(chunk)

    threads = [threading.Thread(target=feed, args=(p,)) for p in pieces]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert verifier.remaining == 0
    verifier.finish()  # all zeros: any order of equal chunks sums the same
    with pytest.raises(eqx_msg.LayoutError, match="finished"):
        verifier.feed(pieces[0])
