"""Sharded arrays: saved layouts recorded, restored, resharded, each device reading its own slice.

conftest.py forces 8 host CPU devices, so these run on any machine.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import eqx_msg

from conftest import frame, reframe

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (host) devices")


def _mesh(shape, names):
    return Mesh(np.array(jax.devices()[: int(np.prod(shape))]).reshape(shape), names)


def _array(sharding, shape=(16, 8)):
    return jax.device_put(jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape), sharding)


SPECS = {"rows": P("x"), "cols": P(None, "y"), "2d": P("x", "y"), "replicated": P()}


@pytest.mark.parametrize("name", SPECS)
def test_saved_layout_round_trips(name, tmp_path):
    mesh = _mesh((4, 2), ("x", "y"))
    array = _array(NamedSharding(mesh, SPECS[name]))
    path = tmp_path / "s.eqx"
    eqx_msg.save(path, {"w": array})
    record = eqx_msg.header(str(path)).leaves[0].sharding
    assert record.mesh_axes == ["x", "y"] and record.mesh_shape == [4, 2]
    loaded = eqx_msg.load(path, sharding="saved")["w"]
    assert loaded.sharding == array.sharding
    assert jnp.array_equal(loaded, array)
    with eqx_msg.open(path) as reader:  # one leaf, through the reader
        one = reader.get("['w']", sharding="saved")
    assert one.sharding == array.sharding and jnp.array_equal(one, array)


def test_reshard_4x2_to_2x4_and_8(tmp_path):
    array = _array(NamedSharding(_mesh((4, 2), ("x", "y")), P("x", "y")))
    path = tmp_path / "r.eqx"
    eqx_msg.save(path, {"w": array})
    for target in [
        NamedSharding(_mesh((2, 4), ("a", "b")), P("a", "b")),
        NamedSharding(_mesh((8,), ("d",)), P("d")),
    ]:
        loaded = eqx_msg.load(path, sharding=target)["w"]
        assert loaded.sharding == target and jnp.array_equal(loaded, array)


def test_sharding_as_callable_and_pytree(tmp_path):
    mesh = _mesh((8,), ("d",))
    path = tmp_path / "c.eqx"
    eqx_msg.save(path, {"a": jnp.ones((8, 4)), "b": jnp.ones(3)})
    rows = NamedSharding(mesh, P("d"))
    loaded = eqx_msg.load(path, sharding=lambda key, sds: rows if sds.shape[0] % 8 == 0 else None)
    assert loaded["a"].sharding == rows and len(loaded["b"].devices()) == 1
    loaded = eqx_msg.load(path, sharding={"a": rows, "b": None})
    assert loaded["a"].sharding == rows
    with pytest.raises(eqx_msg.ShardingError, match="zzz"):
        eqx_msg.load(path, sharding={"zzz": rows})


def test_row_shards_alias_the_map(tmp_path):
    path = tmp_path / "alias.eqx"
    eqx_msg.save(path, {"w": jnp.arange(8 * 64, dtype=jnp.float32).reshape(8, 64)})
    reader = eqx_msg.open(path)
    sharding = NamedSharding(_mesh((8,), ("d",)), P("d"))
    w = reader.get("['w']", sharding=sharding)
    start, end = reader._file.buf.ctypes.data, reader._file.buf.ctypes.data + len(reader._file.buf)
    pointers = [s.data.unsafe_buffer_pointer() for s in w.addressable_shards]
    assert all(start <= p < end for p in pointers)


def test_saved_layout_needs_its_devices(tmp_path):
    path = tmp_path / "gone.eqx"
    eqx_msg.save(path, {"w": _array(NamedSharding(_mesh((4, 2), ("x", "y")), P("x")))})

    def elsewhere(header: dict) -> None:  # device ids this machine does not have
        header["leaves"][0]["sharding"]["device_ids"] = [100 + i for i in range(8)]

    data = reframe(path.read_bytes(), elsewhere)
    assert eqx_msg.loads(bytes(data))["w"].shape == (16, 8)  # no sharding asked: default device
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(bytes(data))
    with pytest.raises(eqx_msg.ShardingError, match="not present"):
        eqx_msg.load(bad, sharding="saved")


def test_sharded_save_streams_by_shard(tmp_path, monkeypatch):
    from eqx_msg.io import _writer

    mesh = _mesh((8,), ("d",))
    array = _array(NamedSharding(mesh, P("d")), shape=(4096, 16))  # above _writer._SMALL_LEAF
    seen = []
    real = _writer._leaves.host_array
    monkeypatch.setattr(
        _writer._leaves, "host_array", lambda r, s: seen.append(s.shape) or real(r, s)
    )
    path = tmp_path / "shards.eqx"
    eqx_msg.save(path, {"w": array})
    assert seen == [(512, 16)] * 8
    assert jnp.array_equal(eqx_msg.load(path)["w"], array)


def test_weak_type_survives_sharded_loading(tmp_path):
    mesh = _mesh((4,), ("x",))
    step = jax.device_put(jnp.asarray(2.0), NamedSharding(mesh, P()))
    assert step.weak_type
    path = tmp_path / "w.eqx"
    eqx_msg.save(path, {"step": step})
    for sharding in ("saved", NamedSharding(mesh, P()), lambda key, spec: NamedSharding(mesh, P())):
        loaded = eqx_msg.load(path, sharding=sharding)["step"]
        assert loaded.weak_type and float(loaded) == 2.0 and loaded.sharding.spec == P()
    with eqx_msg.open(path) as reader:
        assert reader.get("['step']", sharding="saved").weak_type


def test_key_arrays_record_and_restore_their_sharding(tmp_path):
    mesh = _mesh((4,), ("x",))
    keys = jax.device_put(jax.random.split(jax.random.key(0), 8), NamedSharding(mesh, P("x")))
    path = tmp_path / "k.eqx"
    eqx_msg.save(path, {"keys": keys})
    record = eqx_msg.header(str(path)).leaves[0].sharding
    assert record is not None and record.spec == ["x"] and record.mesh_shape == [4]
    loaded = eqx_msg.load(path, sharding="saved")["keys"]
    assert loaded.sharding == keys.sharding
    assert jnp.array_equal(jax.random.key_data(loaded), jax.random.key_data(keys))


GOOD_RECORD = {"mesh_axes": ["x", "y"], "mesh_shape": [4, 2], "device_ids": list(range(8)),
               "spec": ["x", None], "memory_kind": None}  # fmt: skip


def _with_record(edit, path):
    """A file at `path` whose one leaf (float32 [8, 6]) has GOOD_RECORD changed by `edit`."""
    record = {"path": "['w']", "kind": "jax", "dtype": "float32", "shape": [8, 6], "offset": 0,
              "nbytes": 192, "sharding": {**GOOD_RECORD, **edit}}  # fmt: skip
    header = {"format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": 192,
              "leaves": [record], "tree": {"t": "dict", "k": ["w"], "c": [0]}}  # fmt: skip
    path.write_bytes(frame(header, bytes(192)))
    return path


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"mesh_shape": [0]}, "1 entries for the 2"),
        ({"mesh_shape": [0, 2]}, "an int >= 1, found int 0"),  # an empty mesh aborted jaxlib
        ({"mesh_shape": [0, 0], "device_ids": []}, "an int >= 1"),
        ({"mesh_axes": ["x", "x"]}, 'names the axis "x" more than once'),
        ({"mesh_axes": ["x"]}, "has 2 entries for the 1 entries of"),
        ({"device_ids": [0] * 8}, "the id 0 more than once"),
        ({"device_ids": [0, 1]}, "holds 2, but a mesh of shape \\[4, 2\\] has more places"),
        ({"spec": ["z"]}, "not one of the mesh axes"),
        ({"spec": ["x", "x"]}, 'the mesh axis "x" more than once'),
        ({"spec": [1]}, "entry 0: expected nil, an axis name or an array of axis names"),
        ({"mesh_axes": None}, '"mesh_axes" is missing'),
        ({"spec": ["x", None, None]}, "3 entries, more than the 2 dimensions"),
        ({"spec": [None, "x"]}, "splits dimension 1 \\(6\\) into 4 parts"),  # uneven
        ({"memory_kind": 1}, "memory_kind"),
    ],
)
def test_a_malformed_sharding_record_is_refused_by_every_entry_point(edit, match, tmp_path):
    path = _with_record(edit, tmp_path / "bad.eqx")
    # The Rust core checks the record when the file is opened (FORMAT.md section 7).
    match = rf"leaf 0 \(path \"\['w'\]\"\) field \"sharding\": .*(?:{match})"
    loads = lambda p: eqx_msg.loads(p.read_bytes())  # noqa: E731
    for read in (eqx_msg.load, eqx_msg.open, eqx_msg.header, loads):
        with pytest.raises(eqx_msg.HeaderError, match=match):
            read(path)


@pytest.mark.parametrize(
    "edit",
    [
        {"mesh_shape": [8, 1], "spec": [None, None]},
        {"mesh_shape": [8, 1], "spec": ["x"]},  # 8 rows over 8 devices
        {"mesh_shape": [2, 4], "spec": [None, ["x"]]},  # 6 columns over 2
        {"spec": [["x", "y"]]},  # 8 rows over 8
        {"spec": []},
    ],
)
def test_an_even_sharding_record_loads_as_saved(edit, tmp_path):
    path = _with_record(edit, tmp_path / "ok.eqx")
    loaded = eqx_msg.load(path, sharding="saved")["w"]
    spec = [tuple(e) if isinstance(e, list) else e for e in edit["spec"]]
    assert loaded.shape == (8, 6) and loaded.sharding.spec == P(*spec)
    assert eqx_msg.header(path).leaves[0].sharding.mesh_shape == edit.get("mesh_shape", [4, 2])


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"memory_kind": "bogus"}, "does not fit here"),
        ({"device_ids": list(range(100, 108))}, "are not present here"),
    ],
)
def test_a_saved_sharding_these_devices_cannot_hold_is_a_sharding_error(edit, match, tmp_path):
    # A valid record (every entry point opens the file) that only sharding="saved" cannot rebuild.
    path = _with_record(edit, tmp_path / "bad.eqx")
    assert eqx_msg.load(path)["w"].shape == (8, 6)
    assert eqx_msg.header(path).leaves[0].sharding is not None
    with pytest.raises(eqx_msg.ShardingError, match=match):
        eqx_msg.load(path, sharding="saved")
    with eqx_msg.open(path) as reader, pytest.raises(eqx_msg.ShardingError, match=match):
        reader.get("['w']", sharding="saved")
