"""A property fuzzer of the header's `tree` (FORMAT.md section 4), aimed at the split of commit
e1f95db: the Rust core checks the tree's structural rules when a file is opened, and the Python
builder (`_tree.unflatten`, `child_keys`, `walk`, `subtree_paths`, `value_paths`,
`static_differences`) reads what the core accepted without checks of its own.

The promise under test: whatever tree a file holds, every entry point (`header`, `loads`, `load`,
`open` and each `Reader` method, `loads(like=...)` and `loads(filter=...)`) either accepts it or
raises an `EqxMsgError` subclass, never a raw Python exception; and `header` never refuses a file
with a class other than the one `loads` refuses it with.

Trees are drawn by hypothesis: nodes of every type, mostly well formed but with required keys
dropped, values of the wrong msgpack type, nil values, extra keys, lengths that disagree, leaf
indices repeated, out of range, negative, bool or float, static values of every tag (good and
malformed), and maps that repeat a key (encoded by hand: no msgpack library writes those). Leaf
indices are numbered in the order the core walks the tree, and records get the key paths the
builder would give them, so many files are accepted and the `like=` / `filter=` paths run too.

`test_trees_never_raise_a_raw_exception` leaves out two shapes of tree (unhashable dict keys, `c`
on none/value nodes) that raised raw exceptions when this file was written;
`test_the_fuzzer_with_the_bug_shapes_finds_nothing` draws them too. The tests after it are the
bugs it found, each fixed since (the review of e1f95db).
"""

from __future__ import annotations

import contextlib
import math
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import golden  # noqa: F401 - registers eqx_msg.golden.Pair / Block
import jax.tree_util as jtu
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import eqx_msg
from eqx_msg import _tree

sys.path.insert(0, str(Path(__file__).resolve().parent))

MISSING = {"$": "ref", "v": "equinox._module._flatten.MISSING"}

# --------------------------------------------------------------------------------------------
# msgpack with repeated keys: a map given as a list of pairs is encoded in order, as is.


class Pairs:
    """A msgpack map given as its (key, value) pairs, in order; keys may repeat."""

    def __init__(self, items: list[tuple[Any, Any]]):
        self.items = list(items)

    def __repr__(self) -> str:
        return f"Pairs({self.items!r})"


class Signed:
    """A non-negative int encoded as a msgpack int64 (0xd3): an int all the same."""

    def __init__(self, value: int):
        self.value = value

    def __repr__(self) -> str:
        return f"Signed({self.value})"


class F32:
    """A float encoded as a msgpack float32 (0xca)."""

    def __init__(self, value: float):
        self.value = value

    def __repr__(self) -> str:
        return f"F32({self.value})"


def enc(value: Any) -> bytes:
    """msgpack of `value`, where `Pairs`, `Signed` and `F32` are encoded as they say."""
    if isinstance(value, dict):
        value = Pairs(list(value.items()))
    if isinstance(value, Pairs):
        n = len(value.items)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(enc(k) + enc(v) for k, v in value.items)
    if isinstance(value, list | tuple):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(enc(v) for v in value)
    if isinstance(value, Signed):
        return b"\xd3" + struct.pack(">q", value.value)
    if isinstance(value, F32):
        return b"\xca" + struct.pack(">f", value.value)
    return msgpack.packb(value, use_bin_type=True)


def plain(value: Any) -> Any:
    """`value` as Python's msgpack decodes what `enc` writes (last repeated key wins)."""
    if isinstance(value, Pairs | dict):
        items = value.items if isinstance(value, Pairs) else list(value.items())
        out = {}
        for k, v in items:
            try:
                out[plain(k)] = plain(v)
            except TypeError:  # an unhashable key: not a node we read paths from
                return None
        return out
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Signed):
        return value.value
    if isinstance(value, F32):
        return float(np.float32(value.value))
    return value


def file_of(tree: Any, paths: list[str]) -> bytes:
    """A file of one float32[4] numpy leaf per entry of `paths`, whose tree is `tree` (encoded with
    `enc`), framed as FORMAT.md says; every other field is valid."""
    n = len(paths)
    leaves = [
        {"path": p, "kind": "numpy", "dtype": "float32", "shape": [4], "offset": 64 * i,
         "nbytes": 16}
        for i, p in enumerate(paths)
    ]  # fmt: skip
    data = b"".join(
        np.arange(4 * i, 4 * i + 4, dtype="<f4").tobytes() + bytes(48) for i in range(n)
    )
    header = Pairs([("format", "eqx_msg"), ("version", 1), ("alignment", 64),
                    ("data_nbytes", len(data)), ("leaves", leaves), ("tree", tree),
                    ("metadata", None), ("writer", {})])  # fmt: skip
    encoded = enc(header)
    pad = (-(16 + len(encoded))) % 64
    return b"EQXMSG" + struct.pack("<HQ", 1, len(encoded)) + encoded + bytes(pad) + data


# --------------------------------------------------------------------------------------------
# Strategies.


class Leaf:
    """Where a leaf index goes: numbered once the tree is drawn (or made wrong on purpose)."""

    def __init__(self, wrong: Any = None):
        self.wrong = wrong  # None: the next index; else the raw value to put there

    def __repr__(self) -> str:
        return "Leaf()" if self.wrong is None else f"Leaf({self.wrong!r})"


NAMES = [
    "equinox.nn.Identity", "equinox.nn.Linear", "eqx_msg.golden.Pair", "eqx_msg.golden.Block",
    "jax.tree_util.Partial", "optax.ScaleByAdamState", "builtins.dict", "builtins.list",
    "builtins.tuple", "builtins.int", "builtins.float", "collections.OrderedDict",
    "collections.defaultdict", "collections.deque", "jax.nn.relu", "jax.numpy.float32",
    "equinox._module._flatten.MISSING", "no.such.Name", "", "builtins.eval", "os.system",
    "builtins.NoneType",
]  # fmt: skip
TAGS = [
    "none",
    "value",
    "list",
    "tuple",
    "dict",
    "ordereddict",
    "defaultdict",
    "namedtuple",
    "node",
]
STATIC_TAGS = ["ref", "list", "dict", "set", "frozenset", "int", "complex", "dtype", "partial",
               "ndarray", "numpy_scalar", "enum", "new"]  # fmt: skip
UNHASHABLE_TAGS = {"list", "dict", "set", "ndarray"}  # decode to values no dict key can be
# Unknown keys of tree nodes and tagged values (some are names pydantic or Python care about).
EXTRA_KEYS = ["future", "x", "$x", "model_config", "__class__", "model_fields", "__dict__", "_x",
              "T", "t ", "kk", "cc", "\u00e9", ""]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**63, 2**64 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.0, 0.0, -0.0, float("nan")]),
    st.text(max_size=6),
    st.binary(max_size=6),
)


@st.composite
def statics(draw: st.DrawFn, depth: int = 2, hashable: bool = False) -> Any:
    """A static value (FORMAT.md section 6): good or malformed, of every tag. `hashable`: only
    values that decode to something a dict key can be (or that fail to decode)."""
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        return draw(scalars)
    inner = statics(depth - 1, hashable)
    kind = draw(st.integers(0, 9))
    if kind <= 1:
        return draw(st.lists(inner, max_size=3))
    if kind == 2 and not hashable:  # an untagged map (refused when decoded), maybe odd keys
        keys = st.one_of(st.text(max_size=3), st.integers(-3, 3), st.lists(st.integers(0, 2), max_size=2),
                         st.booleans(), st.sampled_from([1.0, F32(1.0)]))  # fmt: skip
        return Pairs(draw(st.lists(st.tuples(keys, inner), max_size=3)))
    tags = [t for t in STATIC_TAGS if not (hashable and t in UNHASHABLE_TAGS)]
    tag = draw(st.sampled_from([*tags, "nope", 5, None]))
    fields: dict[str, Any] = {"$": tag}
    if tag == "ref":
        fields["v"] = draw(st.one_of(st.sampled_from(NAMES), scalars))
    elif tag in ("list", "set", "frozenset"):
        fields["v"] = draw(st.one_of(st.lists(inner, max_size=3), scalars))
    elif tag == "dict":
        n = draw(st.integers(0, 2))
        fields["k"] = draw(st.lists(statics(depth - 1, True), min_size=n, max_size=n))
        fields["v"] = draw(st.lists(inner, min_size=n, max_size=n + draw(st.integers(0, 1))))
    elif tag == "int":
        fields["v"] = draw(
            st.one_of(st.sampled_from(["1" + "0" * 30, "-5", "x", "9" * 5000]), scalars)
        )
    elif tag == "complex":
        fields["v"] = draw(
            st.one_of(st.lists(st.one_of(st.floats(), st.text(max_size=1)), max_size=3), scalars)
        )
    elif tag == "dtype":
        fields["v"] = draw(st.sampled_from(["float32", "int4", "bfloat16", "nope", 3]))
    elif tag == "partial":
        fields["f"] = {
            "$": "ref",
            "v": draw(st.sampled_from(["jax.nn.relu", "builtins.min", "jax.jit"])),
        }
        fields["args"] = draw(st.one_of(st.lists(inner, max_size=2), scalars))
        fields["kw"] = draw(st.sampled_from([{"$": "dict", "k": [], "v": []}, {"$": "dict", "k": ["a"], "v": [1]},
                                             {"$": "dict", "k": [1], "v": [1]}, [], None]))  # fmt: skip
    elif tag in ("ndarray", "numpy_scalar"):
        fields["dtype"] = draw(st.sampled_from(["float32", "int8", "int4", "nope", None]))
        fields["shape"] = draw(st.sampled_from([[], [1], [2, 2], [-1], [10**12], "x", [True]]))
        fields["data"] = draw(st.sampled_from([b"", b"\0" * 4, b"\0" * 16, "x", None]))
    elif tag == "enum":
        fields["cls"] = draw(st.sampled_from(["jax.numpy.float32", "enum.Enum", "no.such", 3]))
        fields["v"] = draw(st.sampled_from(["x", "A", 1]))
    elif tag == "new":
        fields["cls"] = draw(
            st.sampled_from(["equinox.nn._shared.SharedNode", "builtins.object", 3])
        )
    if draw(st.integers(0, 5)) == 0:
        fields[draw(st.sampled_from(EXTRA_KEYS))] = draw(scalars)
    items = list(fields.items())
    if draw(st.integers(0, 12)) == 0:  # a key repeated (the core refuses the file)
        items.append(draw(st.sampled_from(items)))
    return Pairs(items)


def wrong_value(draw: st.DrawFn) -> Any:
    """A value of some msgpack type, often the wrong one for the key it is put under."""
    return draw(st.one_of(scalars, st.lists(st.integers(0, 2), max_size=2), st.just({"a": 1}),
                          st.just(Pairs([(1, 2)]))))  # fmt: skip


@st.composite
def nodes(draw: st.DrawFn, depth: int, bugs: bool, rate: int) -> Any:
    """A tree node: a leaf marker, a wrong-typed node, or a map of some type; `rate` percent of
    them damaged (`finish`).

    `bugs`: also draw the shapes known to raise raw exceptions at this commit (unhashable dict keys;
    a `c` of some type on a `none` or `value` node)."""
    roll = draw(st.integers(0, 99))
    if depth <= 0 or roll < 35:
        if (
            draw(st.integers(0, 99)) < rate // 2
        ):  # a wrong leaf: repeated (None later), out of range, negative, bool, float...
            return Leaf(draw(st.sampled_from(["again", 7, 2**64 - 1, -1, True, False, 0.0, 1.5,
                                              F32(0.0), "0", None, [], b"\0"])))  # fmt: skip
        if roll < 4:
            return Leaf(Signed(-1))  # the next index, encoded as an int64 (still an int)
        if roll < 25:
            return Leaf()
        if roll < 30:
            return {"t": "none"}
        node = {"t": "value", "v": draw(statics())}
        if draw(st.booleans()):
            node["p"] = draw(st.one_of(st.none(), st.text(max_size=4), st.integers(0, 3)))
        return finish(draw, node, depth, bugs, rate)
    tag = draw(st.sampled_from(TAGS))
    if tag in ("none", "value"):
        node = {"t": tag} if tag == "none" else {"t": tag, "v": draw(statics())}
        return finish(draw, node, depth, bugs, rate)
    children = draw(st.lists(nodes(depth - 1, bugs, rate), max_size=3))
    node: dict[str, Any] = {"t": tag}
    if tag in ("dict", "ordereddict", "defaultdict"):
        keys = st.one_of(st.text(max_size=3), st.integers(-3, 3), st.sampled_from([True, 1.0, None]),
                         statics(1, hashable=not bugs))  # fmt: skip
        node["k"] = draw(st.lists(keys, min_size=len(children), max_size=len(children)))
        if tag == "defaultdict":
            node["factory"] = draw(st.sampled_from([None, {"$": "ref", "v": "builtins.list"},
                                                    {"$": "ref", "v": "builtins.int"},
                                                    {"$": "ref", "v": "jax.nn.relu"}, 3]))  # fmt: skip
    elif tag in ("namedtuple", "node"):
        node["cls"] = draw(st.sampled_from(NAMES))
        if draw(st.integers(0, 3)) > 0:
            guess = draw(st.sampled_from(["a", "b", "weight", "bias", "x"]))
            names = [f"{guess}{i}" if i else guess for i in range(len(children))]
            if tag == "node":
                names = [f".{n}" if draw(st.booleans()) else f"[{i}]" for i, n in enumerate(names)]
            node["keys"] = names
        if tag == "node":
            which = draw(st.integers(0, 3))
            if which <= 1:
                node["aux"] = draw(st.one_of(st.just([MISSING]), st.just(None), statics()))
            if which >= 1:
                static = {"in_features": 2, "out_features": 2, "use_bias": True}
                if draw(st.booleans()):
                    static = {draw(st.sampled_from(["a", "in_features", "n"])): draw(statics())}
                node["static"] = static if which < 3 else None
    node["c"] = children
    return finish(draw, node, depth, bugs, rate)


@st.composite
def trees(draw: st.DrawFn, bugs: bool) -> Any:
    """A root node, its nodes damaged at one rate drawn per tree (most trees are well formed)."""
    rate = draw(st.sampled_from([0, 0, 0, 2, 5, 10, 30]))
    return draw(nodes(4, bugs, rate))


def finish(draw: st.DrawFn, node: dict[str, Any], depth: int, bugs: bool, rate: int) -> Any:
    """`node`, damaged `rate` percent of the time: a key dropped, a value of another type or nil, a
    length changed, a key repeated or not a str; sometimes extra keys."""
    roll = draw(st.integers(0, 99)) * 27 // max(rate, 1) if rate else 100
    items = list(node.items())
    if roll < 6 and items:
        del items[draw(st.integers(0, len(items) - 1))]
    elif roll < 14 and items:
        i = draw(st.integers(0, len(items) - 1))
        items[i] = (items[i][0], wrong_value(draw))
    elif roll < 18 and items:
        i = draw(st.integers(0, len(items) - 1))
        items[i] = (items[i][0], None)
    elif roll < 22:
        for i, (k, v) in enumerate(items):
            if k in ("k", "keys") and isinstance(v, list):
                items[i] = (k, [*v, v[0] if v else "a"] if draw(st.booleans()) else v[:-1])
    elif roll < 25 and items:
        items.append(draw(st.sampled_from(items)))  # a repeated key
    elif roll < 27:
        items.insert(0, (draw(st.integers(-2, 2)), None))  # a non-str key
    if draw(st.integers(0, 5)) == 0:
        key = draw(st.sampled_from(EXTRA_KEYS))
        items.append(
            (key, draw(st.one_of(statics(), st.lists(nodes(depth - 1, bugs, rate), max_size=2))))
        )
    if bugs and node.get("t") in ("none", "value") and draw(st.integers(0, 3)) == 0:
        c = [5, None, True, 1.5, b"x", "abc", {"a": 1}, [{"x": 1}], ["s"], [5], [[0]]]
        items.append(("c", draw(st.sampled_from(c))))
    if draw(st.integers(0, 4)) == 0:
        items.reverse()  # `t` need not come first
    return Pairs(items)


# --------------------------------------------------------------------------------------------
# Numbering the leaves as the core walks the tree, and giving records the builder's key paths.

CONTAINERS = {"list", "tuple", "dict", "ordereddict", "defaultdict", "namedtuple", "node"}


def number(tree: Any) -> tuple[Any, list[str], list[str]]:
    """`tree` with its leaf markers numbered in the core's walk order (markers the core does not
    walk become 0), the record paths (the builder's key paths where it can say them) and the key
    paths of the containers and values met (for `Reader.get` of a path that is no leaf)."""
    paths: list[str] = []
    others: list[str] = []

    def walk(node: Any, path: str | None, walked: bool) -> Any:
        if isinstance(node, Leaf):
            if not walked:
                return 0
            if node.wrong is None:
                paths.append(path if path is not None else f"[#{len(paths)}]")
                return len(paths) - 1
            if isinstance(node.wrong, Signed):
                paths.append(path if path is not None else f"[#{len(paths)}]")
                return Signed(len(paths) - 1)
            if node.wrong == "again":
                return max(len(paths) - 1, 0)
            return node.wrong
        if isinstance(node, list):
            return [walk(v, None, False) for v in node]
        if not isinstance(node, Pairs):
            return node
        d = plain(node)
        tag = d.get("t") if isinstance(d, dict) else None
        tag = tag if isinstance(tag, str) else None
        keys = None
        if walked and path is not None and tag in CONTAINERS and isinstance(d.get("c"), list):
            try:
                keys = _tree.child_keys(d, path)
            except Exception:  # (a node the core will refuse)
                keys = None
            if not (isinstance(keys, list) and len(keys) == len(d["c"])
                    and all(isinstance(k, str) for k in keys)):  # fmt: skip
                keys = None  # (the core refuses the node, or the file says no keys)
        if walked and path is not None:
            others.append(path)
        items = []
        for k, v in node.items:
            if k == "c" and walked and tag in CONTAINERS and isinstance(v, list):
                v = [
                    walk(child, path + keys[i] if keys else None, True) for i, child in enumerate(v)
                ]
            elif k == "p" and tag == "value" and isinstance(v, str) and path is not None and walked:
                v = path if v != "" else v
            else:
                v = walk(v, None, False)
            items.append((k, v))
        return Pairs(items)

    return walk(tree, "", True), paths, others


# --------------------------------------------------------------------------------------------
# Verdicts.


def verdict(read: Any) -> tuple[str, Any]:
    """("ok", value) or (the EqxMsgError subclass's name, None); any other exception propagates."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "ok", read()
    except eqx_msg.EqxMsgError as err:
        return type(err).__name__, None


def bools_like(tree: Any, seed: int) -> Any:
    """A filter= pytree: `tree`'s structure with a bool at each leaf (None if JAX cannot map it)."""
    try:
        flat, treedef = jtu.tree_flatten(tree)
        return jtu.tree_unflatten(treedef, [bool((i + seed) % 3) for i in range(len(flat))])
    except Exception:  # (a dict JAX cannot sort the keys of: the file's own business)
        return None


def check_file(data: bytes, paths: list[str], others: list[str], tmp: Path) -> dict[str, str]:
    got: dict[str, str] = {}
    got["header"], _ = verdict(lambda: eqx_msg.header(data))
    got["loads"], loaded = verdict(lambda: eqx_msg.loads(data))
    tmp.write_bytes(data)
    got["load"], _ = verdict(lambda: eqx_msg.load(tmp))
    got["open"], reader = verdict(lambda: eqx_msg.open(data))
    if got["open"] != "ok":
        assert {got["header"], got["loads"], got["load"]} == {got["open"]}, got
        return got
    assert got["load"] == got["loads"], got
    if got["header"] != "ok":  # (no metadata here: a header refusal is the file's verdict)
        assert got["header"] == got["loads"], got
    with reader:
        for name in ("header", "metadata"):
            got[f"reader.{name}"], _ = verdict(lambda name=name: getattr(reader, name))
        assert got["reader.header"] == got["header"], got
        for name in ("keys", "specs", "abstract", "load"):
            got[f"reader.{name}()"], _ = verdict(getattr(reader, name))
        assert got["reader.keys()"] == "ok", got
        assert got["reader.load()"] == got["loads"], got
        for k in ("reader.specs()", "reader.abstract()"):
            assert got[k] in ("ok", got["loads"]), (k, got)
        for key in [*reader.keys(), *others, "", "[0]", "['a']", ".weight", "[", "nope"]:
            got[f"get({key!r})"], _ = verdict(lambda key=key: reader.get(key))
            got[f"[{key!r}]"], _ = verdict(lambda key=key: reader[key])
        got["reader.load(filter=all)"], _ = verdict(lambda: reader.load(filter=lambda p: True))
    # like= and filter=: walk, subtree_paths, value_paths and static_differences.
    likes: list[Any] = [[np.zeros(4, np.float32)], {"a": np.zeros(4, np.float32)}, None, (1, "x")]
    if loaded is not None and not (
        callable(loaded) and jtu.treedef_is_leaf(jtu.tree_structure(loaded))
    ):
        likes.insert(0, loaded)  # (a callable leaf as like= is called with the metadata: fbd770d)
    for i, like in enumerate(likes):
        got[f"like {i}"], _ = verdict(lambda like=like: eqx_msg.loads(data, like=like))
    filters: list[Any] = [lambda p: len(p) % 2 == 0, {"a": True}, [True, False], {"nope": False}]
    if loaded is not None:
        filters += [bools_like(loaded, 0), bools_like(loaded, 1)]
    prefixes = [p for p in others if p] + paths
    filters += [{p: True} for p in prefixes[:3]]  # (mostly not a pytree of the file: KeyPathError)
    for i, f in enumerate(filters):
        if f is not None:
            got[f"filter {i}"], _ = verdict(lambda f=f: eqx_msg.loads(data, filter=f))
    if got["loads"] == "ok" and "like 4" in got:  # (like 0 was the loaded tree itself)
        assert got["like 0"] in ("ok", "StructureMismatchError"), got
    return got


SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure names its case
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],  # fmt: skip
)
ACCEPTED: list[str] = []  # verdicts seen (a test checks the fuzzer reaches accepted files)


@settings(max_examples=250, **SETTINGS)
@given(tree=trees(bugs=False))
def test_trees_never_raise_a_raw_exception(tree, tmp_path_factory):
    numbered, paths, others = number(tree)
    data = file_of(numbered, paths)
    got = check_file(data, paths, others, tmp_path_factory.mktemp("f") / "f.eqx")
    ACCEPTED.append(got["loads"])


def test_the_fuzzer_reaches_files_every_entry_point_accepts():
    """(Runs after the fuzz test in file order.) Enough drawn files open and load, so `like=`,
    `filter=` and the Reader methods do run on accepted trees, and enough are refused."""
    if not ACCEPTED:
        pytest.skip("run with the fuzz test")
    ok = ACCEPTED.count("ok")
    assert ok >= 0.15 * len(ACCEPTED), (ok, len(ACCEPTED))
    assert len(set(ACCEPTED)) >= 3, set(ACCEPTED)


@st.composite
def leaf_indices(draw: st.DrawFn) -> tuple[Any, int]:
    """A list node of leaf indices as odd msgpack values, and the number of records."""
    n = draw(st.integers(1, 3))
    order = draw(st.permutations(range(n)))
    items: list[Any] = []
    for i in order:
        items.append(draw(st.sampled_from([i, Signed(i), float(i), F32(float(i)), bool(i) if i < 2 else i,
                                           -i - 1, i + n, None, str(i)])))  # fmt: skip
    if draw(st.booleans()) and items:
        items.append(items[0])
    return Pairs([("t", draw(st.sampled_from(["list", "tuple"]))), ("c", items)]), n


@settings(max_examples=60, **SETTINGS)
@given(case=leaf_indices())
def test_leaf_indices_of_every_msgpack_type(case, tmp_path_factory):
    """Only ints 0 <= i < n are leaf indices, each exactly once; int64-encoded ones are ints."""
    tree, n = case
    data = file_of(tree, [f"[{i}]" for i in range(n)])
    got = check_file(data, [], [], tmp_path_factory.mktemp("f") / "f.eqx")
    raw = tree.items[1][1]
    values = [plain(v) for v in raw]
    good = all(type(plain(v)) is int and not isinstance(v, F32) for v in raw) and sorted(
        plain(v) for v in raw
    ) == list(range(n))
    assert (got["open"] == "ok") == good, (values, got)
    if not good:
        assert got["open"] == "HeaderError", got


# --------------------------------------------------------------------------------------------
# The bugs the fuzzer found (each fixed since; they stay as regression tests).

NODE_NO_KEYS = {"t": "node", "cls": "equinox.nn.Identity", "aux": None}  # children's keys unknown


@pytest.mark.parametrize("key", [{"$": "list", "v": []}, {"$": "dict", "k": [], "v": []},
                                 {"$": "set", "v": []}, [{"$": "list", "v": []}],
                                 {"$": "ndarray", "dtype": "int8", "shape": [1], "data": b"\0"}])  # fmt: skip
def test_unhashable_dict_node_key_is_a_header_error(key):
    data = file_of({"t": "dict", "k": [key], "c": [0]}, ["[0]"])
    eqx_msg.header(data)  # accepted: the core does not decode static values
    with pytest.raises(eqx_msg.HeaderError):
        eqx_msg.loads(data)


def test_unhashable_key_among_many_is_a_header_error():
    keys = [*range(40), {"$": "list", "v": []}]
    data = file_of({"t": "dict", "k": keys, "c": [0] + [{"t": "none"}] * 40}, ["[0]"])
    with pytest.raises(eqx_msg.HeaderError):
        eqx_msg.loads(data)


@pytest.mark.parametrize("c", [5, None, True, 1.5])
@pytest.mark.parametrize("tag", ["none", "value"])
@pytest.mark.parametrize("how", ["like", "get", "filter"])
def test_c_of_a_none_or_value_node(c, tag, how):
    node = {"t": tag, "c": c} if tag == "none" else {"t": tag, "v": 1, "p": "[1]", "c": c}
    data = file_of({"t": "list", "c": [0, node]}, ["[0]"])
    assert eqx_msg.loads(data)[1] == (None if tag == "none" else 1)  # the plain load is fine
    try:
        if how == "like":
            eqx_msg.loads(data, like=[np.zeros(4, np.float32), None if tag == "none" else 1])
        elif how == "get":
            eqx_msg.open(data).get("[1]")  # not a leaf: KeyPathError
        else:
            eqx_msg.loads(data, filter=[True, {"x": True}])
    except eqx_msg.EqxMsgError:
        pass


@pytest.mark.parametrize("c", [[{"x": 1}], ["s"], {"a": 1}, "abc", [[0]]])
def test_children_of_a_none_node_below_a_node_without_keys(c):
    tree = {**NODE_NO_KEYS, "c": [0, {"t": "none", "c": c}]}
    data = file_of(tree, ["[0]"])
    eqx_msg.header(data)  # the core accepts it
    with contextlib.suppress(eqx_msg.EqxMsgError):
        eqx_msg.loads(data, like={"x": np.zeros(4, np.float32)})


def test_repeated_key_inside_c_of_a_none_node_is_refused():
    node = Pairs([("t", "none"), ("c", [Pairs([("a", 1), ("a", 2)])])])
    data = file_of(Pairs([("t", "list"), ("c", [0, node])]), ["[0]"])
    with pytest.raises(eqx_msg.HeaderError):
        eqx_msg.open(data)


@settings(max_examples=300, phases=[Phase.generate], report_multiple_bugs=False, **SETTINGS)
@given(tree=trees(bugs=True))
def _fuzz_with_the_known_bugs(tree, tmp_path_factory):
    numbered, paths, others = number(tree)
    check_file(file_of(numbered, paths), paths, others, tmp_path_factory.mktemp("f") / "f.eqx")


def test_the_fuzzer_with_the_bug_shapes_finds_nothing(tmp_path_factory):
    _fuzz_with_the_known_bugs(tmp_path_factory=tmp_path_factory)


def test_a_repeated_key_written_by_hand_is_refused_at_open():
    """The raw-byte trick the fuzzer uses works: a repeated key in a node is refused by the core."""
    tree = Pairs([("t", "list"), ("c", [0]), ("t", "list")])
    with pytest.raises(eqx_msg.HeaderError, match="more than once"):
        eqx_msg.open(file_of(tree, ["[0]"]))
    assert math.isnan(plain(F32(float("nan"))))


def test_a_root_leaf_index_encoded_as_a_signed_int_is_a_leaf_index():
    data = file_of(Signed(0), ["[0]"])
    assert eqx_msg.loads(data).shape == (4,)


def test_a_child_leaf_index_encoded_as_a_signed_int_is_a_leaf_index():
    data = file_of({"t": "list", "c": [Signed(0)]}, ["[0]"])
    assert eqx_msg.loads(data)[0].shape == (4,)
    assert eqx_msg.header(data).tree.c == [0]


def _deep(lists: int, static: int) -> Any:
    """A value node holding arrays `static` deep, inside `lists` nested list nodes."""
    inner: Any = 0
    for _ in range(static):
        inner = [inner]
    node: Any = {"t": "list", "c": [0, {"t": "value", "v": inner, "p": "[1]"}]}
    for _ in range(lists):
        node = {"t": "list", "c": [node]}
    return node


@pytest.mark.parametrize(("lists", "static", "ok"), [(62, 0, True), (61, 2, True), (30, 64, True),
                                                      (0, 124, True), (62, 1, False), (0, 125, False),
                                                      (63, 0, False)])  # fmt: skip
def test_the_deepest_trees_and_static_values(lists, static, ok, tmp_path):
    """At the header's nesting limit nothing recurses too deep (a RecursionError is no
    EqxMsgError), and one level past it is a LimitError everywhere."""
    got = check_file(file_of(_deep(lists, static), ["[0]"]), [], [], tmp_path / "f.eqx")
    if ok:
        assert got["open"] == got["loads"] == got["header"] == "ok", got
        assert got["like 0"] in ("ok", "StructureMismatchError"), got
    else:
        assert got["open"] == "LimitError", got
