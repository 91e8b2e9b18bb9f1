"""Leaf records carry their sharding as the Rust core parsed it (commit e1f95db: core `Sharding` /
`SpecEntry`, the binding's `FileHeader.records()` / `find()`, `_file.header_model`): what a writer
saved, or what a hand-made file holds, must come back exactly through every view of the header
(`eqx_msg.header`, `Reader.header`, the core's records, `find`), from every kind of source, and
rebuild the layout with `sharding="saved"` (`load`, `loads`, `Reader.get`).

conftest.py forces 8 host CPU devices.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import eqx_msg

from conftest import parts

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (host) devices")


def _mesh(shape: tuple[int, ...], names: tuple[str, ...], order: list[int] | None = None) -> Mesh:
    devices = jax.devices()[: int(np.prod(shape))]
    if order is not None:
        devices = [jax.devices()[i] for i in order]
    return Mesh(np.array(devices).reshape(shape), names)


def _expected(sharding: NamedSharding) -> dict[str, Any]:
    """The record FORMAT.md section 7 says a writer stores for `sharding`."""
    mesh = sharding.mesh
    return {
        "mesh_axes": list(mesh.axis_names),
        "mesh_shape": list(mesh.devices.shape),
        "device_ids": [d.id for d in mesh.devices.flat],
        "spec": [list(e) if isinstance(e, tuple) else e for e in sharding.spec],
        "memory_kind": sharding.memory_kind,
    }


def _views(data: bytes, tmp_path) -> list[dict[str, Any] | None]:
    """Leaf 0's sharding through every view of the header, from bytes, a path and a file object."""
    path = tmp_path / "s.eqx"
    path.write_bytes(data)
    out: list[dict[str, Any] | None] = []
    for source in (data, str(path), io.BytesIO(data)):
        h = eqx_msg.header(source)
        s = h.leaves[0].sharding
        out.append(None if s is None else s.model_dump())
    with eqx_msg.open(path) as reader:
        s = reader.header.leaves[0].sharding
        out.append(None if s is None else s.model_dump())
        record = reader._file.header.records()[0]
        out.append(record.get("sharding"))
        found = reader._file.header.find(record["path"])
        out.append(found.get("sharding"))
        assert found["index"] == 0
    return out


SPECS = {
    "rows": ((4, 2), P("x")),
    "cols": ((4, 2), P(None, "y")),
    "both": ((4, 2), P("x", "y")),
    "replicated": ((4, 2), P()),
    "two axes on one dim": ((2, 4), P(("x", "y"))),
    "two axes reversed": ((2, 4), P(None, ("y", "x"))),
    "one axis as a tuple": ((8,), P(("d",), None)),
    "none none": ((2, 4), P(None, None)),
}


@pytest.mark.parametrize("name", SPECS)
def test_a_saved_sharding_comes_back_through_every_view(name, tmp_path):
    shape, spec = SPECS[name]
    names = ("d",) if len(shape) == 1 else ("x", "y")
    # devices in a scrambled mesh order: the ids must come back in mesh order, not sorted
    order = [3, 1, 7, 5, 0, 2, 6, 4]
    sharding = NamedSharding(_mesh(shape, names, order), spec)
    array = jax.device_put(jnp.arange(16 * 8, dtype=jnp.float32).reshape(16, 8), sharding)
    data = eqx_msg.dumps({"w": array})
    want = _expected(sharding)
    assert parts(data)[1]["leaves"][0]["sharding"] == want  # what the writer wrote
    for view in _views(data, tmp_path):
        assert view == want
    path = tmp_path / "s.eqx"
    for loaded in (
        eqx_msg.load(path, sharding="saved")["w"],
        eqx_msg.loads(data, sharding="saved")["w"],
        eqx_msg.load(io.BytesIO(data), sharding="saved")["w"],
    ):
        assert loaded.sharding == sharding
        assert jnp.array_equal(loaded, array)
    for source in (path, data, io.BytesIO(data)):
        with eqx_msg.open(source) as reader:
            one = reader.get("['w']", sharding="saved")
            assert one.sharding == sharding and jnp.array_equal(one, array)
            assert reader.get("['w']").sharding != sharding  # (not placed unless asked)


def test_a_sharded_key_array_round_trips(tmp_path):
    sharding = NamedSharding(_mesh((8,), ("d",)), P("d"))
    keys = jax.device_put(jax.random.split(jax.random.key(0), 8), sharding)
    data = eqx_msg.dumps({"k": keys, "w": jnp.ones(3)})
    for view in _views(data, tmp_path):
        assert view == _expected(sharding)
    loaded = eqx_msg.loads(data, sharding="saved")
    assert loaded["k"].sharding == sharding
    assert jnp.array_equal(jax.random.key_data(loaded["k"]), jax.random.key_data(keys))
    assert eqx_msg.header(data).leaves[1].sharding is None  # a single-device array: no record
    with eqx_msg.open(data) as reader:
        assert reader.get("['k']", sharding="saved").sharding == sharding
        assert "sharding" not in reader._file.header.records()[1]


def _file(record: Any, shape: list[int]) -> bytes:
    nbytes = 4 * int(np.prod(shape))
    leaf = {"path": "['w']", "kind": "jax", "dtype": "float32", "shape": shape, "offset": 0,
            "nbytes": nbytes, "sharding": record}  # fmt: skip
    header = {"format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": nbytes,
              "leaves": [leaf], "tree": {"t": "dict", "k": ["w"], "c": [0]}}  # fmt: skip
    encoded = msgpack.packb(header, use_bin_type=True)
    pad = (-(16 + len(encoded))) % 64
    data = np.arange(int(np.prod(shape)), dtype="<f4").tobytes()
    return b"EQXMSG" + struct.pack("<HQ", 1, len(encoded)) + encoded + bytes(pad) + data


MESH = {"mesh_axes": ["x", "y"], "mesh_shape": [2, 4], "device_ids": [7, 6, 5, 4, 3, 2, 1, 0]}
HAND_MADE: dict[str, dict[str, Any]] = {
    "nil entry": {**MESH, "spec": [None]},
    "axis name": {**MESH, "spec": ["x"]},
    "array of two": {**MESH, "spec": [["x", "y"]]},
    "array of one": {**MESH, "spec": [["y"]]},
    "empty array": {**MESH, "spec": [[]]},
    "mixed": {**MESH, "spec": [[], ["y", "x"]]},
    "nil then name": {**MESH, "spec": [None, "y"]},
    "no entries": {**MESH, "spec": []},
    "memory kind device": {**MESH, "spec": ["x"], "memory_kind": "device"},
    "memory kind pinned_host": {**MESH, "spec": ["x"], "memory_kind": "pinned_host"},
    "memory kind nil": {**MESH, "spec": ["x"], "memory_kind": None},
}
ODD_IDS: dict[str, dict[str, Any]] = {  # legal in a file; no such devices here
    "negative ids": {**MESH, "device_ids": [-1, -5, 0, 3, 2**40, 9, 8, -(2**62)], "spec": ["x"]},
    "extreme ids": {
        "mesh_axes": ["x"],
        "mesh_shape": [2],
        "device_ids": [2**64 - 1, -(2**63)],
        "spec": ["x"],
        "memory_kind": "somewhere",
    },  # fmt: skip
}


def _as_stored(record: dict[str, Any]) -> dict[str, Any]:
    return {"memory_kind": None, **record}


@pytest.mark.parametrize("name", [*HAND_MADE, *ODD_IDS])
def test_a_hand_made_record_is_read_exactly(name, tmp_path):
    record = {**HAND_MADE, **ODD_IDS}[name]
    data = _file(record, [8, 8])
    for view in _views(data, tmp_path):
        assert view == _as_stored(record)
        # the types of the spec entries too: nil, a str, an array (even of one, even empty)
        assert [type(e) for e in view["spec"]] == [type(e) for e in record["spec"]]


@pytest.mark.parametrize("name", HAND_MADE)
def test_a_hand_made_record_loads_as_saved(name, tmp_path):
    record = HAND_MADE[name]
    data = _file(record, [8, 8])
    spec = P(*[tuple(e) if isinstance(e, list) else e for e in record["spec"]])
    devices = {d.id: d for d in jax.devices()}
    mesh = Mesh(np.array([devices[i] for i in record["device_ids"]]).reshape(2, 4), ("x", "y"))
    want = NamedSharding(mesh, spec, memory_kind=record.get("memory_kind"))
    loaded = eqx_msg.loads(data, sharding="saved")["w"]
    assert loaded.sharding == want
    assert [d.id for d in loaded.sharding.mesh.devices.flat] == record["device_ids"]
    assert np.array_equal(np.asarray(loaded), np.arange(64, dtype=np.float32).reshape(8, 8))
    with eqx_msg.open(data) as reader:
        assert reader.get("['w']", sharding="saved").sharding == want


@pytest.mark.parametrize("name", ODD_IDS)
def test_devices_not_here_are_a_sharding_error_only_when_asked(name):
    data = _file(ODD_IDS[name], [8, 8])
    eqx_msg.loads(data)  # (the record is checked, not used)
    with pytest.raises(eqx_msg.ShardingError, match="not present here"):
        eqx_msg.loads(data, sharding="saved")
    with eqx_msg.open(data) as reader, pytest.raises(eqx_msg.ShardingError):
        reader.get("['w']", sharding="saved")


def test_a_nil_sharding_is_absent_everywhere(tmp_path):
    data = _file(None, [8, 8])
    assert _views(data, tmp_path) == [None] * 6
    with eqx_msg.open(data) as reader:
        assert "sharding" not in reader._file.header.records()[0]
    assert eqx_msg.loads(data, sharding="saved")["w"].shape == (8, 8)


def test_records_from_the_core_have_every_section_3_key():
    """Every record the core gives has the section 3 keys (None where absent), whatever the file
    omitted, and the same values the file holds."""
    data = _file({**MESH, "spec": ["x"]}, [8, 8])
    with eqx_msg.open(data) as reader:
        (record,) = reader._file.header.records()
    raw = parts(data)[1]["leaves"][0]
    assert {k: record[k] for k in raw} == {**raw, "sharding": _as_stored(raw["sharding"])}
    assert record["weak_type"] is False and record["key_impl"] is None
