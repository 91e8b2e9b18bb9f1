"""Hostile eqx_msg files, one generator per attack class (docs/SECURITY.md lists them).

Each generator returns the bytes of a small file a hostile writer could hand a user; `ATTACKS` maps
each class's name to its generator at the size the cost tests use, and `benign(n)` makes an ordinary
file of about `n` bytes to compare costs with. The files are framed exactly as FORMAT.md says, with no
checks (`conftest.frame`): nothing here goes through eqx_msg's writer.

    python tests/attacks/hostile.py DIR   # writes every attack file into DIR, to try by hand
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest

import numpy as np  # noqa: E402

from conftest import frame  # noqa: E402

MISSING = {"$": "ref", "v": "equinox._module._flatten.MISSING"}


def header(tree: Any, leaves: list[dict[str, Any]] | None = None, data_nbytes: int = 0,
           metadata: Any = None) -> dict[str, Any]:  # fmt: skip
    """A version 1 header holding `tree`, `leaves` and `metadata`."""
    return {
        "format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": data_nbytes,
        "leaves": leaves or [], "tree": tree, "metadata": metadata, "writer": {},
    }  # fmt: skip


def file(tree: Any, leaves: list[dict[str, Any]] | None = None, data: bytes = b"",
         metadata: Any = None) -> bytes:  # fmt: skip
    """A framed file: `header(...)` and the data section `data`."""
    return frame(header(tree, leaves, len(data), metadata), data)


def ref(name: str) -> dict[str, Any]:
    return {"$": "ref", "v": name}


def partial(func: Any, *args: Any, **keywords: Any) -> dict[str, Any]:
    return {"$": "partial", "f": func, "args": list(args),
            "kw": {"$": "dict", "k": list(keywords), "v": list(keywords.values())}}  # fmt: skip


def lambda_layer(fn: Any) -> dict[str, Any]:
    """An `eqx.nn.Lambda` node whose `fn` is the static value `fn`."""
    return {"t": "node", "cls": "equinox.nn.Lambda", "aux": [MISSING], "keys": [".fn"],
            "c": [{"t": "value", "v": fn, "p": ".fn"}]}  # fmt: skip


def sequential(*layers: Any) -> dict[str, Any]:
    """An `eqx.nn.Sequential` of `layers`."""
    return {"t": "node", "cls": "equinox.nn.Sequential", "aux": [MISSING], "keys": [".layers"],
            "c": [{"t": "tuple", "c": list(layers)}]}  # fmt: skip


# 1. The registry: a model that acts when it is called.


def jit_dump(directory: str) -> bytes:
    """The reported chain: two Lambda layers; the second jits `tree_map(asarray)` with XLA options
    that dump each call's arguments into `directory`. Calling the model returns its input."""
    options = {"$": "dict", "k": ["xla_dump_to", "xla_dump_hlo_snapshots"], "v": [directory, True]}
    jitted = partial(ref("jax.jit"), partial(ref("jax.tree_util.tree_map"), ref("jax.numpy.asarray")),
                     compiler_options=options)  # fmt: skip
    first = lambda_layer(partial(ref("jax.tree_util.Partial"), ref("builtins.min")))
    return file(sequential(first, lambda_layer(jitted)))


# A function a file names, with the arguments it binds: each would make a called model act.
ACTING = {
    "jax.jit": partial(ref("jax.jit"), ref("jax.numpy.sin")),
    "jax.debug.print": partial(ref("jax.debug.print"), "{}"),
    "jax.debug.callback": partial(ref("jax.debug.callback"), ref("builtins.print")),
    "jax.pure_callback": partial(ref("jax.pure_callback"), ref("builtins.print"), None),
    "numpy.vectorize": partial(ref("numpy.vectorize"), ref("builtins.print")),
    "numpy.frompyfunc": partial(ref("numpy.frompyfunc"), ref("builtins.print"), 1, 1),
    "jax.numpy.vectorize": partial(ref("jax.numpy.vectorize"), ref("builtins.print")),
    "jax.tree_util.tree_map": partial(ref("jax.tree_util.tree_map"), ref("jax.numpy.sin")),
    "partial of partial": partial(ref("jax.numpy.add"), partial(ref("jax.numpy.sin"))),
    "numpy.bmat": partial(ref("numpy.bmat"), "x"),
    "equinox.error_if": partial(
        ref("equinox.error_if"), pred=True, msg="x", on_error="breakpoint"
    ),  # fmt: skip
    "jax.lax.scan": partial(ref("jax.lax.scan"), ref("jax.numpy.sin")),
    "numpy.copyto": partial(ref("numpy.copyto"), src=0.0),
    "numpy.fill_diagonal": partial(ref("numpy.fill_diagonal"), val=0.0),
    "options dict": partial(ref("jax.numpy.sum"), where={"$": "dict", "k": ["a"], "v": [1]}),
    "jax.tree_util.Partial of a callable": None,  # built below: a Partial node, not a static value
}


def acting(name: str) -> bytes:
    """A Lambda layer calling `ACTING[name]` (or a `jax.tree_util.Partial` node binding a function)."""
    if ACTING[name] is None:
        node = {"t": "node", "cls": "jax.tree_util.Partial", "aux": ref("jax.numpy.add"),
                "keys": None, "c": [{"t": "tuple", "c": [{"t": "value", "v": ref("jax.numpy.sin")}]},
                                    {"t": "dict", "k": [], "c": []}]}  # fmt: skip
        return file(lambda_layer({"$": "list", "v": []}) | {"c": [node]})
    return file(lambda_layer(ACTING[name]))


def wrapper_fields() -> bytes:
    """A Module whose Equinox wrapper data sets `__module__`, `__name__`, `__qualname__` ..."""
    fields = ["os", "system", "os.system", "doc", {"$": "dict", "k": [], "v": []}]
    return file({"t": "node", "cls": "equinox.nn.Identity", "aux": [fields], "keys": [], "c": []})


def defaultdict_factory() -> bytes:
    """A defaultdict whose factory allocates ~8 TB whenever the loaded dict misses a key."""
    factory = partial(ref("numpy.zeros"), 10**12)
    return file({"t": "defaultdict", "factory": factory, "k": [], "c": []})


# 2-8. Costs a file's size does not bound, and a wrong exception.


def hash_collisions(n: int, where: str = "set") -> bytes:
    """`n` distinct tuples of -1 and -2, which all share one hash (`hash(-1) == hash(-2)`), as a
    static set (`where="set"`), a dict node's keys (`"dict"`) or metadata map keys (`"metadata"`)."""
    width = max(1, int(np.ceil(np.log2(n))))
    keys = [[-1 - ((i >> b) & 1) for b in range(width)] for i in range(n)]
    if where == "metadata":
        return frame({**header({"t": "none"}), "metadata": {tuple(k): 0 for k in keys}}, b"")
    if where == "dict":
        return file({"t": "dict", "k": keys, "c": [{"t": "none"}] * n})
    return file({"t": "value", "v": {"$": "set", "v": keys}})


def long_key_paths(n: int) -> bytes:
    """A dict whose one key is a tuple of `n` strings (a long repr), above a list of `n` nodes:
    each node's key path would repeat the long key."""
    key = ["k" * 8] * n  # a tuple key (a msgpack array)
    return file({"t": "dict", "k": [key], "c": [{"t": "list", "c": [{"t": "none"}] * n}]})


def key_path_memory(n: int) -> bytes:
    """A chain of dicts, each with a long key, above `n` leaves of None: keeping every node's full
    key path (a typo in `reader[...]`) would hold `n` copies of a long prefix."""
    tree: Any = {"t": "list", "c": [{"t": "none"}] * n}
    for _ in range(40):
        tree = {"t": "dict", "k": ["p" * 2000], "c": [tree]}
    return file(tree)


def big_mesh(n: int) -> bytes:
    """A jax leaf whose sharding record has `n` mesh axes of size 2**64 - 1 and one device."""
    sharding = {"mesh_axes": [f"a{i}" for i in range(n)], "mesh_shape": [2**64 - 1] * n,
                "device_ids": [0], "spec": [None]}  # fmt: skip
    leaf = {"path": "[0]", "kind": "jax", "dtype": "float32", "shape": [4], "offset": 0,
            "nbytes": 16, "sharding": sharding}  # fmt: skip
    return file({"t": "list", "c": [0]}, [leaf], bytes(64))


def zero_byte_rows(rows: int, node: str = "namedtuple") -> bytes:
    """A numpy leaf of shape (rows, 0), no bytes, under a `namedtuple` node of class builtins.tuple
    (`node="namedtuple"`) or as the arguments of a `jax.tree_util.Partial` (`"partial"`), whose
    rebuilding would iterate its rows."""
    leaf = {"path": "[0]", "kind": "numpy", "dtype": "float32", "shape": [rows, 0], "offset": 0,
            "nbytes": 0}  # fmt: skip
    if node == "partial":
        tree = {"t": "node", "cls": "jax.tree_util.Partial", "aux": ref("jax.numpy.add"),
                "keys": None, "c": [0, {"t": "dict", "k": [], "c": []}]}  # fmt: skip
    else:
        tree = {"t": "namedtuple", "cls": "builtins.tuple", "c": [0]}
    return file(tree, [leaf], b"")


def huge_static_shape(value: float = float("inf")) -> bytes:
    """A static ndarray whose shape holds `value` (an infinity, 1e300)."""
    return file({"t": "value", "v": {"$": "ndarray", "dtype": "float32", "shape": [value],
                                     "data": b""}})  # fmt: skip


def builtin_container_node() -> bytes:
    """Earlier finding: a `node` of class builtins.dict with fewer keys than children crashed the
    process (SIGSEGV in jaxlib)."""
    return file({"t": "node", "cls": "builtins.dict", "aux": [], "c": [{"t": "none"}, 0]},
                [{"path": "[0]", "kind": "numpy", "dtype": "float32", "shape": [4], "offset": 0,
                  "nbytes": 16}], bytes(64))  # fmt: skip


def empty_mesh() -> bytes:
    """Earlier finding: a sharding record with an empty mesh aborted jaxlib."""
    sharding = {"mesh_axes": ["x"], "mesh_shape": [0], "device_ids": [], "spec": [None]}
    leaf = {"path": "[0]", "kind": "jax", "dtype": "float32", "shape": [4], "offset": 0,
            "nbytes": 16, "sharding": sharding}  # fmt: skip
    return file({"t": "list", "c": [0]}, [leaf], bytes(64))


def benign(nbytes: int) -> bytes:
    """An ordinary file of about `nbytes`, as costly per byte as honest files get: half small
    float32 leaves (a record and a key path each), half a static set of distinct ints (a Python
    object each)."""
    import eqx_msg

    def make(scale: float) -> bytes:
        leaves = {f"w{i}": np.full(4, i, np.float32) for i in range(max(1, int(scale / 320)))}
        return eqx_msg.dumps({"leaves": leaves, "set": frozenset(range(int(scale / 10)))})

    first = make(nbytes)
    return make(nbytes * nbytes / len(first))


# The cost attacks at the sizes the cost tests use (each under 1 MB), by class.
ATTACKS: dict[str, Callable[[], bytes]] = {
    "hash collisions in a static set": lambda: hash_collisions(16384),
    "hash collisions in dict node keys": lambda: hash_collisions(16384, "dict"),
    "hash collisions in metadata keys": lambda: hash_collisions(16384, "metadata"),
    "long key paths": lambda: long_key_paths(20000),
    "key path memory": lambda: key_path_memory(10000),
    "big mesh": lambda: big_mesh(20000),
    "zero-byte rows (namedtuple)": lambda: zero_byte_rows(10**7),
    "zero-byte rows (Partial)": lambda: zero_byte_rows(10**7, "partial"),
}


def main(argv: list[str]) -> int:
    (out,) = argv
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: make() for name, make in ATTACKS.items()}
    files |= {f"acting {name}": acting(name) for name in ACTING}
    files |= {"jit dump": jit_dump(str(directory / "dumped")), "wrapper fields": wrapper_fields(),
              "defaultdict factory": defaultdict_factory(), "inf shape": huge_static_shape(),
              "builtin container node": builtin_container_node(), "empty mesh": empty_mesh()}  # fmt: skip
    for name, data in files.items():
        (
            directory / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".eqx")
        ).write_bytes(data)
    print(f"wrote {len(files)} files to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
