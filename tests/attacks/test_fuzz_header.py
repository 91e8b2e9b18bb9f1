"""A structured fuzzer over the header: 10,000 seeded mutations of real files' headers (and some raw
byte damage), each read by every entry point. Only `EqxMsgError`s may come out, each case finishes in
bounded time, memory stays bounded, and nothing appears on the file system.

The mutator works on the decoded header (msgpack maps and arrays), so most cases get past msgpack and
reach the validators and the tree builder: a value replaced by one from `PALETTE` (extreme numbers,
odd types, registry names good and hostile, tree nodes), a key or element dropped or repeated, a
subtree copied elsewhere. Seeded: a failure names its case, and `FUZZ_CASES`/`FUZZ_SEED` in the
environment rerun or widen it.
"""

import contextlib
import os
import random
import resource
import signal
from pathlib import Path
from typing import Any

import equinox as eqx
import golden  # noqa: F401 - registers the golden files' classes
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import eqx_msg

from conftest import frame, parts

CASES = int(os.environ.get("FUZZ_CASES", "10000"))
SEED = int(os.environ.get("FUZZ_SEED", "12"))
CASE_LIMIT_S = 20  # wall clock per case: a hang fails the test, it does not stop CI
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

NAMES = [
    "jax.jit", "jax.tree_util.tree_map", "jax.tree_util.Partial", "numpy.bmat", "numpy.vectorize",
    "builtins.eval", "builtins.exec", "builtins.getattr", "os.system", "subprocess.Popen",
    "builtins.tuple", "builtins.dict", "builtins.list", "builtins.min", "collections.OrderedDict",
    "equinox.nn.Linear", "equinox.nn.Lambda", "equinox.nn.Sequential", "equinox.error_if",
    "equinox._module._flatten.MISSING", "jax.numpy.add", "jax.nn.relu", "numpy.zeros", "math.sin",
    "optax.ScaleByAdamState", "jax.numpy.float32", "", "x" * 300, "jax", "jax.",
]  # fmt: skip
PALETTE: list[Any] = [
    None, True, False, 0, 1, -1, -2, 7, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, -0.0,
    float("inf"), float("-inf"), float("nan"), 1e300, "", "a", "x" * 5000, b"", b"\x00" * 17, [],
    {}, [[[[]]]], [0, 0], [1, 2, 3], {"t": "none"}, {"t": "list", "c": [0]}, {"t": "dict"},
    {"t": "value", "v": {"$": "set", "v": [[-1], [-2]]}}, {"$": "ref", "v": 0}, {"$": "int", "v": "9" * 400},
    {"$": "ndarray", "dtype": "float32", "shape": [10**9], "data": b""}, {"$": "partial"},
    {"$": "dtype", "v": "float8_e5m3fnu"}, {"$": "enum", "cls": "jax.numpy.float32", "v": "x"},
    {"$": "new", "cls": "builtins.object"}, {"$": "complex", "v": [1, "x"]},
    {"mesh_axes": ["x"], "mesh_shape": [0], "device_ids": [], "spec": [None]},
    {"mesh_axes": ["x", "x"], "mesh_shape": [2, 2**64 - 1], "device_ids": [0, 1], "spec": ["x"]},
]  # fmt: skip


def _seeds() -> list[dict[str, Any]]:
    """Decoded headers (plus their data sections) of real files: golden files and a few more."""
    files = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eqx"))]
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    sharded = jax.device_put(jnp.arange(16.0).reshape(4, 4), NamedSharding(mesh, P("a", "b")))
    mlp = eqx.nn.MLP(2, 2, 4, 2, key=jax.random.key(0))
    files.append(eqx_msg.dumps({"s": sharded, "m": mlp, "k": jax.random.key(1)}, metadata={"a": 1}))
    files.append(eqx_msg.dumps([np.arange(3, dtype=np.int8), {"b": (1, "two", None)}]))
    return [{"header": parts(f)[1], "data": parts(f)[2]} for f in files]


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    """Every (container path) inside a decoded header, to aim a mutation at."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _places(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _places(v, (*path, i))
    return out


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def _mutate(rng: random.Random, header: dict[str, Any]) -> dict[str, Any]:
    header = msgpack.unpackb(msgpack.packb(header), raw=False, strict_map_key=False)  # a deep copy
    places = _places(header)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        aim = rng.choice(("tree", "tree", "tree", "tree", "metadata", "leaves", "leaves", None))
        aimed = [p for p in places[1:] if aim is None or p[:1] == (aim,)]
        path = rng.choice(aimed or places[1:] or places)
        move = rng.random()
        try:  # (an earlier move may have changed what `path` leads to)
            parent, key = _get(header, path[:-1]), path[-1]
            if move < 0.45:
                parent[key] = rng.choice(PALETTE)
            elif move < 0.6:
                parent[key] = {"$": "ref", "v": rng.choice(NAMES)} if rng.random() < 0.5 else {
                    "t": rng.choice(["node", "namedtuple", "defaultdict"]), "cls": rng.choice(NAMES),
                    "aux": rng.choice(PALETTE), "c": rng.choice([[], [0], [{"t": "none"}]]),
                    "k": [], "factory": {"$": "ref", "v": rng.choice(NAMES)},
                }  # fmt: skip
            elif move < 0.7 and isinstance(parent, dict):
                del parent[key]
            elif move < 0.8 and isinstance(parent, list):
                parent.insert(key, parent[key])  # an element repeated
            elif move < 0.9:
                parent[key] = _get(
                    header, rng.choice(places)
                )  # a subtree copied (or nested in itself)
            else:
                value = parent[key]
                if isinstance(value, int) and not isinstance(value, bool):
                    parent[key] = value + rng.choice((-1, 1, 64, -64, 2**32))
                elif isinstance(value, str):
                    parent[key] = value[: rng.randrange(len(value) + 1)] + rng.choice(
                        ["", "[0]", "."]
                    )
        except (KeyError, IndexError, TypeError):
            pass
    return header


def _case(rng: random.Random, seed: dict[str, Any]) -> bytes:
    header, data = seed["header"], seed["data"]
    if rng.random() < 0.85:
        header = _mutate(rng, header)
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    try:
        alignment = header.get("alignment", 64)
        blob = frame(header, data, alignment if alignment in (64, 128, 4096) else 64)
    except (TypeError, ValueError, OverflowError, RecursionError, AttributeError):
        blob = frame(seed["header"], seed["data"])
    if rng.random() < 0.08:  # raw damage: a few bytes anywhere
        damaged = bytearray(blob)
        for _ in range(rng.randrange(1, 5)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        blob = bytes(damaged)
    return blob


def _read_every_way(blob: bytes, path: Path, with_reader: bool) -> None:
    for read in (eqx_msg.header, eqx_msg.loads, lambda b: eqx_msg.loads(b, as_numpy=True)):
        with contextlib.suppress(eqx_msg.EqxMsgError):
            read(blob)
    if not with_reader:
        return
    path.write_bytes(blob)
    with contextlib.suppress(eqx_msg.EqxMsgError):
        eqx_msg.load(path, sharding="saved")
    try:
        reader = eqx_msg.open(path)
    except eqx_msg.EqxMsgError:
        return
    with reader:
        for step in (lambda: reader.header, lambda: reader.metadata, reader.specs, reader.abstract,
                     lambda: [reader[k] for k in reader.keys()[:4]], lambda: reader["['typo']"],
                     lambda: reader.load(filter={"typo": True})):  # fmt: skip
            with contextlib.suppress(eqx_msg.EqxMsgError):
                step()


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError


def test_structured_fuzz_of_the_header_only_ever_raises_eqx_msg_errors(tmp_path, monkeypatch):
    seeds = _seeds()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a file-system effect would land here (or in tmp_path)
    rng = random.Random(SEED)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, _alarm)
    accepted = 0
    try:
        for case in range(CASES):
            blob = _case(rng, rng.choice(seeds))
            signal.alarm(CASE_LIMIT_S)
            try:
                _read_every_way(blob, tmp_path / "case.eqx", with_reader=case % 8 == 0)
                accepted += 1
            except TimeoutError:
                pytest.fail(f"case {case} (seed {SEED}) ran past {CASE_LIMIT_S} s: {blob[:300]!r}")
            except Exception as err:  # noqa: BLE001 - anything but an EqxMsgError is the finding
                pytest.fail(
                    f"case {case} (seed {SEED}): {type(err).__name__}: {err}: {blob[:300]!r}"
                )
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert accepted == CASES
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) in (["case.eqx", "cwd"], ["cwd"])
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 1024, f"peak memory grew {grown_mib:.0f} MiB over {CASES} cases"
