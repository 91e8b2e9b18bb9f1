"""Builtin containers and Python values round-trip with the same structure and leaf kinds."""

import collections
import enum
import functools
import itertools
import re
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg

Point = collections.namedtuple("Point", ["x", "y"])
eqx_msg.register(Point)


class Colour(enum.Enum):
    RED = 1


eqx_msg.register(Colour)


def test_dict_list_tuple_none(roundtrip):
    tree = {"a": [np.arange(3), (jnp.ones(2), None)], "b": {"c": np.float32(2.5)}, "n": None}
    roundtrip(tree)


def test_dict_keys_keep_insertion_order_and_types(roundtrip):
    loaded = roundtrip({"z": np.zeros(1), "a": np.ones(1)})
    assert list(loaded) == ["z", "a"]
    loaded = roundtrip({3: np.arange(2), 1: np.arange(1)})
    assert list(loaded) == [3, 1]
    loaded = roundtrip({(1, "x"): np.arange(1), (0, "y"): np.zeros(2)})
    assert list(loaded) == [(1, "x"), (0, "y")]


def test_namedtuple_ordereddict_defaultdict(roundtrip):
    tree = {
        "p": Point(np.arange(2), jnp.zeros(3)),
        "o": collections.OrderedDict([("b", np.ones(1)), ("a", np.zeros(1))]),
        "d": collections.defaultdict(list, {"k": np.arange(4)}),
    }
    loaded = roundtrip(tree)
    assert type(loaded["p"]) is Point
    assert list(loaded["o"]) == ["b", "a"]
    assert loaded["d"].default_factory is list


def test_python_scalars_and_strings(roundtrip):
    tree = [
        1,
        -(2**63),
        2**64 - 1,
        2**100,
        1.5,
        float("nan"),
        True,
        3 + 4j,
        "text",
        b"\x00\xff",
        None,
    ]
    loaded = roundtrip(tree)
    assert [type(x) for x in loaded] == [type(x) for x in tree]


def test_numpy_scalars_stay_numpy_scalars(roundtrip):
    tree = [np.float32(1.5), np.int8(-3), np.bool_(True), np.complex64(1 - 2j), jnp.bfloat16(1.25)]
    loaded = roundtrip(tree)
    assert [type(x) for x in loaded] == [type(x) for x in tree]


def test_empty_containers(roundtrip):
    roundtrip({"a": [], "b": {}, "c": (), "d": None})
    roundtrip([])
    roundtrip(None)
    roundtrip(np.arange(3))


def test_key_paths_match_jax_keystr():
    tree = {
        "a": [np.arange(3), {"b": jnp.ones(2)}],
        "5": (np.zeros(1),),
        "p": Point(np.ones(1), np.ones(2)),
    }
    header = eqx_msg.header(eqx_msg.dumps(tree))
    expected = sorted(
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    )
    assert sorted(header.keys()) == expected


def test_metadata_round_trips_any_msgpack_value():
    metadata = {"step": 10, "lr": 1e-3, "tags": ["a", "b"], "blob": b"\x01", "nested": {"x": None}}
    data = eqx_msg.dumps({"w": np.ones(2)}, metadata=metadata)
    assert eqx_msg.header(data).metadata == metadata


def test_metadata_with_tuple_keys_reads_back_with_tuple_keys(tmp_path):
    metadata = {(1, 2): "x", ((1, 2), "y"): [1, 2], 3: {"q": (4,)}}
    eqx_msg.save(tmp_path / "m.eqx", {"w": np.ones(2)}, metadata=metadata)
    with eqx_msg.open(tmp_path / "m.eqx") as reader:
        assert reader.metadata == {(1, 2): "x", ((1, 2), "y"): [1, 2], 3: {"q": [4]}}
        assert reader.header.metadata == reader.metadata


def test_metadata_that_is_not_msgpack_is_refused_naming_where():
    with pytest.raises(eqx_msg.UnserialisableError, match=r"^metadata\['bad'\]: "):
        eqx_msg.dumps({"w": np.ones(2)}, metadata={"bad": object()})
    with pytest.raises(eqx_msg.UnserialisableError, match=r"^metadata\['a'\]\[1\]: .*ndarray"):
        eqx_msg.dumps({}, metadata={"ok": 1, "a": [2, np.ones(3)]})  # arrays belong in the tree


def test_values_msgpack_cannot_store_are_unserialisable_errors_that_say_where():
    with pytest.raises(eqx_msg.UnserialisableError, match=r"^metadata\['rng'\]: "):
        eqx_msg.dumps({}, metadata={"rng": jax.random.key(0)})  # a 0-d key is no number
    for tree in ({"s": "\udcff"}, {"\ud800": np.ones(1)}):  # lone surrogates: not UTF-8
        with pytest.raises(eqx_msg.UnserialisableError, match=r"^the header\['tree'\].*utf-8"):
            eqx_msg.dumps(tree)
    with pytest.raises(eqx_msg.UnserialisableError, match=r"^\['f'\]: cannot store a set item"):
        eqx_msg.dumps({"f": functools.partial(max, frozenset({"a", "\ud800"}))})
    for dtype in ("U3", "M8[s]", "O"):  # a static dtype the format has no name for
        with pytest.raises(eqx_msg.UnserialisableError, match=r"^\['f'\]: dtype"):
            eqx_msg.dumps({"f": functools.partial(np.zeros, 3, np.dtype(dtype))})


def test_numpy_and_jax_scalars_in_metadata_are_stored_as_numbers():
    metadata = {
        "loss": jnp.float32(0.5),
        "step": np.int64(7),
        "done": np.bool_(True),
        "lr": jnp.asarray(0.25, jnp.bfloat16),
        "scale": np.float16(1.5),
        "bits": jnp.asarray(3, jnp.int4),
    }
    stored = eqx_msg.header(eqx_msg.dumps({}, metadata=metadata)).metadata
    assert stored == {"loss": 0.5, "step": 7, "done": True, "lr": 0.25, "scale": 1.5, "bits": 3}
    assert [type(v) for v in stored.values()] == [float, int, bool, float, float, int]


def test_loads_refuses_a_non_contiguous_buffer_with_a_type_error():
    data = eqx_msg.dumps({"w": np.ones(2)})
    with pytest.raises(TypeError, match="not C-contiguous"):
        eqx_msg.loads(memoryview(data + data)[::2])


def test_loads_accepts_bytearray_memoryview_and_mmap(tmp_path):
    import mmap

    tree = {"w": np.arange(10, dtype=np.float32)}
    data = eqx_msg.dumps(tree)
    for buffer in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(eqx_msg.loads(buffer)["w"], tree["w"])
    path = tmp_path / "f.eqx"
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        np.testing.assert_array_equal(eqx_msg.loads(mm)["w"], tree["w"])


def test_loaded_numpy_leaves_are_read_only_views():
    data = eqx_msg.dumps({"w": np.arange(1000, dtype=np.float32)})
    w = eqx_msg.loads(data)["w"]
    assert not w.flags.writeable
    base = np.frombuffer(data, np.uint8)
    assert base.ctypes.data <= w.ctypes.data < base.ctypes.data + len(data)  # no copy


def test_loads_of_misaligned_bytes_places_jax_leaves_from_one_aligned_copy():
    tree = {"w": [jnp.full((1 << 20,), i, jnp.float32) for i in range(5)], "n": np.arange(3)}
    data = eqx_msg.dumps(tree)
    assert np.frombuffer(data, np.uint8).ctypes.data % 64 != 0  # a bytes object's data
    loaded = eqx_msg.loads(data)
    for a, b in zip(tree["w"], loaded["w"]):
        assert b.unsafe_buffer_pointer() % 64 == 0 and jnp.array_equal(a, b)
    assert not loaded["n"].flags.writeable


def _nested(depth: int) -> list:
    tree: object = np.arange(2)
    for _ in range(depth):
        tree = [tree]
    return tree


def test_nesting_up_to_the_format_limit_round_trips_and_deeper_is_refused_by_key_path(roundtrip):
    from eqx_msg._tree import MAX_NESTING

    roundtrip(_nested(MAX_NESTING))
    roundtrip({"a": (_nested(MAX_NESTING - 2),)})
    where = re.escape("[0]" * MAX_NESTING)
    for depth in (MAX_NESTING + 1, 5000):  # 5000: far past Python's recursion limit
        with pytest.raises(eqx_msg.LimitError, match=rf"^{where}: .* at most {MAX_NESTING} levels"):
            eqx_msg.dumps(_nested(depth))


_STATIC_SHAPES = {  # a static value nested k levels deep, its innermost value of each kind
    "tuple": lambda k, inner: functools.reduce(lambda v, _: (v,), range(k), inner),
    "list": lambda k, inner: functools.reduce(lambda v, _: [v], range(k), inner),
    "dict": lambda k, inner: functools.reduce(lambda v, _: {"k": v}, range(k), inner),
    # (a partial binds values only: lists nest inside it, where functions may not stand)
    "partial": lambda k, inner: functools.partial(
        np.add, functools.reduce(lambda v, _: [v], range(k - 1), inner)
    ),
}
_INNER = {"int": 1, "big int": 2**70, "complex": 1j, "ndarray": np.arange(2), "function": np.add,
          "numpy scalar": np.float32(1), "enum member": Colour.RED}  # fmt: skip


@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")  # (an ndarray inner value)
@pytest.mark.parametrize("shape", list(_STATIC_SHAPES))
def test_the_static_value_depth_check_refuses_exactly_what_the_header_limit_refuses(
    shape, monkeypatch
):
    """Python's key-path check agrees, at every boundary, with Rust's check of the encoded header."""

    def verdict(tree) -> bool:
        try:
            eqx_msg.dumps(tree)
            return True
        except eqx_msg.LimitError:
            return False

    inners = [v for v in _INNER.values() if shape != "partial" or not callable(v)]
    for depth, inner, parity in itertools.product((0, 1, 40, 62), inners, (0, 1)):
        for k in range(1, 130):
            static = _STATIC_SHAPES[shape](k, inner)
            static = (static,) if parity else static  # one level down: each check is binding once
            with monkeypatch.context() as m:  # Rust's verdict alone, on the encoded header
                m.setattr(eqx_msg._static, "_room", lambda level, where: None)
                rust = verdict(_nested_around(static, depth))
            if not rust:
                with pytest.raises(eqx_msg.LimitError, match="static value nests"):
                    eqx_msg.dumps(_nested_around(static, depth))
                break
            assert verdict(_nested_around(static, depth)), (shape, depth, inner, k)
        else:
            pytest.fail("the header limit was never reached")


class _Holding(eqx.Module):
    """A node whose flatten data is one static value."""

    value: Any = eqx.field(static=True)


def _nested_around(static, depth: int) -> object:
    value: object = _Holding(static)
    for _ in range(depth):
        value = [value]
    return value


def test_metadata_nested_past_the_header_limit_is_a_limit_error_naming_metadata():
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    with pytest.raises(eqx_msg.LimitError, match='in header field "metadata": '):
        eqx_msg.dumps({}, metadata=deep)


def test_a_static_value_nested_past_the_header_limit_is_a_limit_error():
    deep: object = 1
    for _ in range(5000):
        deep = (deep,)
    with pytest.raises(eqx_msg.LimitError, match="static value nests"):
        eqx_msg.dumps({"f": functools.partial(np.add, deep)})  # a leaf: one static value
