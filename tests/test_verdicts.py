"""Every entry point gives a file the same verdict: all accept it, or all refuse it with the same
`EqxMsgError` subclass (issue 13: one authority per rule).

Every damaged and hand-made file of the suite (the parametrized cases of test_damaged.py and
test_sharding.py, the attack files of tests/attacks/hostile.py, the golden files) and the cases of
the rules the Rust core now checks go through `eqx_msg.header`, `loads`, `load`, `open` and each
`Reader` method.

What may legitimately differ, and why (each is asserted below, not just allowed):

- A file the Rust core refuses at open is refused by every entry point with the same class; the
  Reader methods never run.
- Of a file the core accepts, the tree (static values, registry names, dict key distinctness, which
  leaf records the tree references) and the key impls are interpreted only by what builds values
  from them: `loads`, `load` and `Reader.load` (one verdict, the file's), `Reader.abstract`,
  `Reader.specs`, `reader[key]` and `reader.get(key)`. Each of these either gives the file's verdict
  or accepts (a leaf that is not at fault reads fine even when the tree is broken); none refuses a
  file that `loads` accepts, and none refuses with another class.
- `eqx_msg.header` / `Reader.header` type the tree's nodes but do not decode static values, resolve
  names, or make leaf types: they accept, or give the file's verdict; never another, never a refusal
  of a file that `loads` accepts.
- `Reader.keys` reads only what the core checked: it accepts every file that opens.
  The metadata is decoded only by `header`, `Reader.header` and `Reader.metadata` (`loads` and
  `load` return none): a fault in it (keys sharing one hash) is theirs alone, and they agree on it.
- `Reader.verify` reads every data byte, which nothing else checks: it refuses a file whose leaf
  bytes were damaged after writing (ChecksumError) that every other entry point accepts.
"""

from __future__ import annotations

import io
import itertools
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import eqx_msg

sys.path.insert(0, str(Path(__file__).parent / "attacks"))

import hostile  # noqa: E402
import test_damaged as damaged  # noqa: E402
import test_sharding as sharding  # noqa: E402

from conftest import frame, reseal  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def _params(test: Any) -> list[tuple[Any, ...]]:
    """The argument tuples of a test's (single) parametrize mark."""
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return [p if isinstance(p, tuple) else (p,) for p in mark.args[1]]


def _one_leaf(tree: Any = None, **header: Any) -> bytes:
    h = damaged._header([damaged._leaf(0, 16)], 64, tree=tree)
    return frame({**h, **header}, bytes(64))


def _record(**record: Any) -> bytes:
    leaf = {**damaged._leaf(0, 16), **record}
    nbytes = leaf.get("nbytes") or 0
    data_nbytes = max(64, nbytes)
    return frame(damaged._header([leaf], data_nbytes), bytes(data_nbytes))


def _sharded(record: dict[str, Any], shape: list[int] | None = None) -> bytes:
    shape = shape or [8, 6]
    nbytes = 4 * int(np.prod(shape))
    leaf = {"path": "['w']", "kind": "jax", "dtype": "float32", "shape": shape, "offset": 0,
            "nbytes": nbytes, "sharding": record}  # fmt: skip
    header = {"format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": nbytes,
              "leaves": [leaf], "tree": {"t": "dict", "k": ["w"], "c": [0]}}  # fmt: skip
    return frame(header, bytes(nbytes))


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x10
    return bytes(out)


EXT = msgpack.ExtType(5, b"ab")
# The rules the Rust core checks since issue 13, with the class every entry point must raise.
NEW_RULES: dict[str, tuple[bytes, type[eqx_msg.EqxMsgError]]] = {
    "mesh of two places, one device id": (
        _sharded({"mesh_axes": ["x"], "mesh_shape": [2], "device_ids": [0], "spec": [None]}),
        eqx_msg.HeaderError,
    ),
    "uneven split": (
        _sharded(
            {"mesh_axes": ["x"], "mesh_shape": [4], "device_ids": [0, 1, 2, 3], "spec": [None, "x"]}
        ),  # fmt: skip
        eqx_msg.HeaderError,
    ),
    "spec longer than the rank": (
        _sharded({**sharding.GOOD_RECORD, "spec": ["x", None, None]}),
        eqx_msg.HeaderError,
    ),
    "ext value as a value node's v": (
        _one_leaf({"t": "list", "c": [0, {"t": "value", "v": EXT, "p": "[1]"}]}),
        eqx_msg.HeaderError,
    ),
    "ext value in a leaf record": (_record(future_key=EXT), eqx_msg.HeaderError),
    "ext value in writer": (_one_leaf(writer={"jax": EXT}), eqx_msg.HeaderError),
    "abstract leaf of shape [2**63, 0]": (
        _record(kind="abstract", shape=[2**63, 0], offset=None, nbytes=None),
        eqx_msg.LimitError,
    ),
    "numpy leaf of shape [2**63, 0]": (
        _record(shape=[2**63, 0], nbytes=0),
        eqx_msg.LimitError,
    ),
    "writer key not a str": (_one_leaf(writer={1: "0.1.0"}), eqx_msg.HeaderError),
    "a value node's p not a str": (
        _one_leaf({"t": "list", "c": [0, {"t": "value", "v": 1, "p": 5}]}),
        eqx_msg.HeaderError,
    ),
    "a node's keys not str": (
        _one_leaf(
            {
                "t": "node",
                "cls": "equinox.nn.Identity",
                "aux": [hostile.MISSING],
                "keys": [1],
                "c": [0],
            }  # fmt: skip
        ),
        eqx_msg.HeaderError,
    ),
    "a leaf index that is a bool": (_one_leaf({"t": "list", "c": [True]}), eqx_msg.HeaderError),
}


def _repeating(tree: Any, unique: bytes, repeated: bytes) -> bytes:
    """A one-leaf file whose tree holds a key twice: `tree` encoded, then the key `unique` (a
    msgpack str of the same length) renamed to `repeated`, which the same map already holds."""
    data = _one_leaf(tree)
    assert data.count(unique) == 1
    return data.replace(unique, repeated)


_NODE = {"t": "node", "cls": "equinox.nn.Identity", "c": [0]}
# The structural rules of the tree (FORMAT.md section 4), the core's since issue 13: refused when
# the file is opened, so by every entry point alike (`Reader.keys` included), with HeaderError.
TREE_RULES: dict[str, bytes] = {
    "leaf index out of range": _one_leaf({"t": "list", "c": [0, 1]}),
    "leaf index twice": _one_leaf({"t": "list", "c": [0, 0]}),
    "leaf record never referenced": _one_leaf({"t": "list", "c": []}),
    "negative int as a node": _one_leaf({"t": "list", "c": [0, -1]}),
    "str as a node": _one_leaf({"t": "list", "c": [0, "x"]}),
    "nil as a node": _one_leaf({"t": "list", "c": [0, None]}),
    "no t": _one_leaf({"c": [0]}),
    "t not a str": _one_leaf({"t": 3, "c": [0]}),
    "unknown node type": _one_leaf({"t": "leaf", "i": 0}),
    "list without c": _one_leaf({"t": "tuple", "c": [0, {"t": "list"}]}),
    "c not an array": _one_leaf({"t": "list", "c": [0, {"t": "list", "c": {"a": 1}}]}),
    "dict without k": _one_leaf({"t": "dict", "c": [0]}),
    "dict keys and children of other lengths": _one_leaf({"t": "dict", "k": ["a", "b"], "c": [0]}),
    "defaultdict without factory": _one_leaf({"t": "defaultdict", "k": ["a"], "c": [0]}),
    "value without v": _one_leaf({"t": "list", "c": [0, {"t": "value", "p": "[1]"}]}),
    "node without cls": _one_leaf({"t": "node", "aux": None, "c": [0]}),
    "cls not a str": _one_leaf({**_NODE, "cls": 5, "aux": None}),
    "node with aux and static": _one_leaf({**_NODE, "aux": None, "static": {}}),
    "node with neither aux nor static": _one_leaf(_NODE),
    "static not a map": _one_leaf({**_NODE, "static": [1]}),
    "static with a non-str key": _one_leaf({**_NODE, "static": {1: 2}}),
    "node keys shorter than c": _one_leaf({**_NODE, "aux": None, "keys": []}),
    "namedtuple keys longer than c": _one_leaf(
        {"t": "namedtuple", "cls": "x.P", "keys": ["a", "b"], "c": [0]}
    ),
    "repeated key in a node": _repeating(
        {"t": "list", "c": [0], "qa": 1, "qb": 2}, b"\xa2qb", b"\xa2qa"
    ),
    "repeated t": _repeating({"t": "list", "c": [0], "u": "x"}, b"\xa1u", b"\xa1t"),
    "repeated name in static": _repeating(
        {**_NODE, "static": {"qa": 1, "qb": 2}}, b"\xa2qb", b"\xa2qa"
    ),
    "repeated key in a tagged value": _repeating(
        {"t": "list", "c": [0, {"t": "value", "v": {"$": "ref", "v": "x.y", "qa": 1, "qb": 2}}]},
        b"\xa2qb",
        b"\xa2qa",
    ),
}
TREE_ACCEPTED: dict[str, bytes] = {  # what the same rules let through (nil counts as absent)
    "nil p, keys and static": _one_leaf(
        {
            "t": "list",
            "c": [
                0,
                {"t": "value", "v": 1, "p": None},
                {**_NODE, "c": [], "aux": [hostile.MISSING], "static": None, "keys": None},
            ],
        }  # fmt: skip
    ),
    "unknown keys in nodes": _one_leaf({"t": "list", "c": [0], "future": {"x": [1]}}),
}


# Keys 1, True and 1.0 are one key in Python: a file holding two of them is refused by what
# decodes dict keys (the header model does not).
NEW_RULES_TREE_ONLY: dict[str, tuple[bytes, type[eqx_msg.EqxMsgError]]] = {
    f"dict keys {a!r} and {b!r}": (
        _one_leaf({"t": "dict", "k": [a, b], "c": [0, {"t": "none"}]}),
        eqx_msg.HeaderError,
    )
    for a, b in [(1, True), (1, 1.0), (0, False)]
}


def _cases() -> dict[str, bytes]:
    cases: dict[str, bytes] = {"good": damaged.GOOD, "good, without checksums": damaged.OLD}
    cases |= {f"golden {p.name}": p.read_bytes() for p in sorted(FIXTURES.glob("*.eqx"))}
    for i, (data, *_) in enumerate(_params(damaged.test_framing_damage)):
        cases[f"framing {i}"] = data
    for i, (leaves, nbytes, *_) in enumerate(_params(damaged.test_leaf_table_damage)):
        cases[f"leaf table {i}"] = frame(damaged._header(leaves, nbytes), bytes(nbytes))
    for name in ("test_malformed_or_hostile_tree", "test_a_malformed_tree_is_a_header_error_with_like_or_filter_too"):  # fmt: skip
        for i, (tree, *_) in enumerate(_params(getattr(damaged, name))):
            cases[f"tree {name[5:20]} {i}"] = _one_leaf(tree)
    for (cls,) in _params(damaged.test_a_node_of_a_builtin_container_class_is_refused):
        cases[f"node of {cls}"] = _one_leaf({"t": "node", "cls": cls, "aux": [], "c": [0]})
    for edit, *_ in _params(damaged.test_header_models_report_a_header_error_not_a_pydantic_one):
        cases[f"header model {edit}"] = _one_leaf(**edit)
    for dtype, shape in _params(damaged.test_key_leaves_must_hold_their_impls_data):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        leaf = {**damaged._leaf(0, nbytes, dtype, shape), "kind": "key", "key_impl": "threefry2x32"}
        cases[f"key data {dtype}{shape}"] = frame(damaged._header([leaf], nbytes), bytes(nbytes))
    cases["unknown key impl"] = _record(kind="key", dtype="uint32", shape=[2], nbytes=8,
                                        key_impl="nope")  # fmt: skip
    cases["float6 jax leaf"] = _record(kind="jax", dtype="float6_e2m3fn", nbytes=4)
    cases["nil optional keys"] = _record(weak_type=None, key_impl=None, sharding=None)
    cases["no tree"] = frame(
        {k: v for k, v in damaged._header([damaged._leaf(0, 16)], 64).items() if k != "tree"},
        bytes(64),
    )
    for edit, _ in _params(
        sharding.test_a_malformed_sharding_record_is_refused_by_every_entry_point
    ):
        cases[f"sharding {edit}"] = _sharded({**sharding.GOOD_RECORD, **edit})
    for (edit,) in _params(sharding.test_an_even_sharding_record_loads_as_saved):
        cases[f"even sharding {edit}"] = _sharded({**sharding.GOOD_RECORD, **edit})
    for name, make in hostile.ATTACKS.items():
        cases[f"attack {name}"] = make()
    for name in hostile.ACTING:
        cases[f"acting {name}"] = hostile.acting(name)
    for name in ("wrapper_fields", "defaultdict_factory", "huge_static_shape",
                 "builtin_container_node", "empty_mesh"):  # fmt: skip
        cases[f"attack {name}"] = getattr(hostile, name)()
    # Damage after writing: a data byte (only verify reads it), a header byte (checked on open).
    (header_len,) = struct.unpack_from("<Q", damaged.GOOD, 8)
    cases["flipped data byte"] = _flip(damaged.GOOD, len(damaged.GOOD) - 1)
    cases["flipped header byte"] = _flip(damaged.GOOD, 16 + header_len // 2)
    cases["nonzero header padding"] = reseal(_flip(damaged.GOOD, 16 + header_len))
    cases |= {name: data for name, (data, _) in NEW_RULES.items()}
    cases |= {name: data for name, (data, _) in NEW_RULES_TREE_ONLY.items()}
    cases |= {f"tree rule: {name}": data for name, data in TREE_RULES.items()}
    cases |= {f"tree rule passes: {name}": data for name, data in TREE_ACCEPTED.items()}
    return cases


CASES = _cases()
DATA_DAMAGED = {"flipped data byte"}  # only verify reads the bytes damaged


def _verdict(read: Callable[[], Any]) -> str:
    """ "ok", or the name of the EqxMsgError subclass raised (anything else fails the test)."""
    try:
        read()
    except eqx_msg.EqxMsgError as err:
        return type(err).__name__
    return "ok"


def _verdicts(data: bytes, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "f.eqx"
    path.write_bytes(data)
    out = {
        "header": _verdict(lambda: eqx_msg.header(data)),
        "loads": _verdict(lambda: eqx_msg.loads(data)),
        "load": _verdict(lambda: eqx_msg.load(path)),
    }
    return {**out, **_reader_verdicts(path)}


def _reader_verdicts(source: Any) -> dict[str, str]:
    """The verdicts of `open(source)` and of each Reader method."""
    out = {}
    try:
        reader = eqx_msg.open(source)
    except eqx_msg.EqxMsgError as err:
        out["open"] = type(err).__name__
        return out
    out["open"] = "ok"
    with reader:
        for name in ("header", "metadata"):
            out[f"reader.{name}"] = _verdict(lambda name=name: getattr(reader, name))
        for name in ("keys", "specs", "abstract", "load"):
            out[f"reader.{name}()"] = _verdict(getattr(reader, name))
        for key in reader.keys():  # noqa: SIM118 - the method under test
            if (
                reader._file.header.find(key)["kind"] != "abstract"
            ):  # (no data to index: a KeyPathError by design)
                out[f"reader[{key!r}]"] = _verdict(lambda key=key: reader[key])
            out[f"reader.get({key!r})"] = _verdict(lambda key=key: reader.get(key))
        if reader._file.header.has_checksums:
            out["reader.verify()"] = _verdict(reader.verify)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_every_entry_point_gives_the_same_verdict(name, tmp_path):
    got = _verdicts(CASES[name], tmp_path)
    file = got["loads"]  # the file's verdict
    if got["open"] != "ok":
        assert {got[k] for k in ("header", "loads", "load", "open")} == {got["open"]}, got
        return
    assert got["load"] == got["reader.load()"] == file, got
    assert got["header"] == got["reader.header"], got
    assert got["reader.keys()"] == "ok", got
    # The metadata is decoded by header, reader.header and reader.metadata (loads returns none).
    metadata = got["reader.metadata"]
    assert metadata == "ok" or metadata == got["header"], got
    assert got["header"] in ("ok", file, metadata), got
    rebuilders = [k for k in got if k.startswith(("reader[", "reader.get(", "reader.abstract", "reader.specs"))]  # fmt: skip
    for k in rebuilders:
        assert got[k] in ("ok", file), (k, got)
    if "reader.verify()" in got:
        assert got["reader.verify()"] == ("ChecksumError" if name in DATA_DAMAGED else "ok"), got
    if file == "ok":  # accepted by loads: by everything, but what reads what loads does not
        others = {k: v for k, v in got.items() if v != "ok"}
        allowed = {"reader.verify()"} if name in DATA_DAMAGED else set()
        if metadata != "ok":
            allowed |= {"header", "reader.header", "reader.metadata"}
        assert set(others) <= allowed, got


@pytest.mark.parametrize("name", list(CASES))
def test_a_source_read_by_range_gets_the_verdicts_of_the_map(name, tmp_path):
    data = CASES[name]
    path = tmp_path / "f.eqx"
    path.write_bytes(data)
    mapped = _reader_verdicts(path)
    with open(path, "rb") as f:
        assert _reader_verdicts(f) == mapped
        assert _verdict(lambda: eqx_msg.load(f)) == _verdict(lambda: eqx_msg.load(path))
        assert _verdict(lambda: eqx_msg.header(f)) == _verdict(lambda: eqx_msg.header(data))
    assert _reader_verdicts(io.BytesIO(data)) == mapped


@pytest.mark.parametrize("name", list(NEW_RULES))
def test_the_rules_the_core_checks_are_refused_by_every_entry_point(name, tmp_path):
    data, error = NEW_RULES[name]
    got = _verdicts(data, tmp_path)
    assert got["loads"] == error.__name__, got
    assert got["header"] == error.__name__, got  # never accepted by the header model alone
    if got["open"] != "ok":  # the core's rules: refused at open, so by every entry point
        assert {got[k] for k in ("header", "loads", "load")} == {error.__name__}, got


@pytest.mark.parametrize("name", list(TREE_RULES))
def test_the_trees_structural_rules_are_checked_when_a_file_is_opened(name, tmp_path):
    got = _verdicts(TREE_RULES[name], tmp_path)
    assert got == dict.fromkeys(("header", "loads", "load", "open"), "HeaderError"), got
    with pytest.raises(eqx_msg.HeaderError, match='header field "tree", node tree'):
        eqx_msg.open(TREE_RULES[name])


@pytest.mark.parametrize("name", list(TREE_ACCEPTED))
def test_what_the_trees_rules_let_through_loads(name, tmp_path):
    got = _verdicts(TREE_ACCEPTED[name], tmp_path)
    assert set(got.values()) == {"ok"}, got


@pytest.mark.parametrize("name", list(NEW_RULES_TREE_ONLY))
def test_dict_keys_equal_in_python_are_one_key(name, tmp_path):
    data, error = NEW_RULES_TREE_ONLY[name]
    got = _verdicts(data, tmp_path)
    assert got["loads"] == got["load"] == got["reader.load()"] == error.__name__, got


def test_the_suite_cases_cover_each_class_of_verdict(tmp_path):
    seen = {_verdict(lambda d=data: eqx_msg.loads(d)) for data in CASES.values()}  # type: ignore[misc]
    assert {"ok", "HeaderError", "LayoutError", "LimitError", "LengthError", "MagicError",
            "VersionError", "DTypeError", "ChecksumError", "UnknownTypeError"} <= seen  # fmt: skip
    assert len(CASES) > 100
    assert not [k for k in itertools.islice(CASES, 3) if not CASES[k]]
