"""The header: pydantic models, the published JSON schema, and reading it with plain msgpack."""

import json
import pathlib
import signal
import struct

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pydantic
import pytest

import eqx_msg

from conftest import frame

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "docs" / "header.schema.json"


# The pydantic that wrote docs/header.schema.json: older ones word the same schema differently (how
# a discriminated union is shown), so the exact text is compared from this version on, and the
# structure in every version.
SCHEMA_PYDANTIC = (2, 14)
STALE = "docs/header.schema.json is stale: run python -m eqx_msg schema > docs/header.schema.json"


def _structure(schema: dict) -> dict:
    """Each model's fields, required fields and the dtype enum: what no pydantic version words."""
    return {
        name: (sorted(model.get("properties", {})), sorted(model.get("required", [])))
        for name, model in {"Header": schema, **schema["$defs"]}.items()
    } | {"dtype enum": schema["$defs"]["LeafSpec"]["properties"]["dtype"]["enum"]}


def test_schema_file_has_every_model_field_and_dtype():
    published = json.loads(SCHEMA.read_text())
    assert _structure(published) == _structure(eqx_msg.Header.model_json_schema()), STALE
    assert published["$defs"]["LeafSpec"]["properties"]["dtype"]["enum"] == (
        eqx_msg._core.dtype_names()
    )


def test_schema_file_is_up_to_date():
    installed = tuple(int(part) for part in pydantic.VERSION.split(".")[:2])
    if installed < SCHEMA_PYDANTIC:
        pytest.skip(f"pydantic {pydantic.VERSION} words the schema differently from the one that "
                    "wrote it; the structure is compared above")  # fmt: skip
    current = json.dumps(eqx_msg.Header.model_json_schema(), indent=2, sort_keys=True) + "\n"
    assert SCHEMA.read_text() == current, STALE


def test_header_reads_with_plain_msgpack_alone():
    """What a reader in another language does: parse the prefix, decode the map, slice the bytes."""
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "k": jax.random.key(3), "s": 1.5}
    data = eqx_msg.dumps(tree, metadata={"run": "a"})
    assert data[:6] == b"EQXMSG"
    version, header_len = struct.unpack("<HQ", data[6:16])
    assert version == 1
    header = msgpack.unpackb(data[16 : 16 + header_len])
    start = -(-(16 + header_len) // header["alignment"]) * header["alignment"]
    assert len(data) == start + header["data_nbytes"]
    by_path = {leaf["path"]: leaf for leaf in header["leaves"]}
    w = by_path["['w']"]
    values = np.frombuffer(data, "<f4", count=6, offset=start + w["offset"]).reshape(w["shape"])
    np.testing.assert_array_equal(values, tree["w"])
    assert by_path["['k']"]["key_impl"] == "threefry2x32"
    assert header["metadata"] == {"run": "a"}
    assert {"eqx_msg", "jax", "equinox"} <= set(header["writer"])
    assert header["tree"]["t"] == "dict"


def test_every_leaf_is_aligned():
    data = eqx_msg.dumps([np.ones(n, np.int8) for n in range(1, 40)] + [jnp.ones(3, jnp.bfloat16)])
    header = eqx_msg.header(data)
    _, header_len = struct.unpack("<HQ", data[6:16])
    start = -(-(16 + header_len) // 64) * 64
    assert start % 64 == 0
    assert all((start + leaf.offset) % header.alignment == 0 for leaf in header.leaves)


def test_larger_alignment():
    data = eqx_msg.dumps({"a": np.ones(3), "b": np.ones(5)}, alignment=4096)
    header = eqx_msg.header(data)
    assert header.alignment == 4096 and all(leaf.offset % 4096 == 0 for leaf in header.leaves)
    np.testing.assert_array_equal(eqx_msg.loads(data)["b"], np.ones(5))


def test_header_model_is_typed():
    header = eqx_msg.header(eqx_msg.dumps({"w": jnp.ones((2, 2))}, metadata=[1, 2]))
    assert isinstance(header.leaves[0], eqx_msg.LeafSpec)
    assert header.leaves[0].kind == "jax" and header.leaves[0].shape == [2, 2]
    assert header.metadata == [1, 2]
    assert header.keys() == ["['w']"]


def test_writer_values_of_any_type_are_read():
    header = {"format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": 0, "leaves": [],
              "tree": {"t": "none"}, "writer": {"eqx_msg": "9.9", "build": 7, "flags": [1]}}  # fmt: skip
    data = frame(header, b"")
    assert eqx_msg.header(data).writer == {"eqx_msg": "9.9", "build": 7, "flags": [1]}
    assert eqx_msg.loads(data) is None


def test_a_tree_nested_to_the_limit_validates_in_linear_time():
    # pydantic 2.6 validated each level of the recursive Node union ~5 times over: 3.6 s at depth
    # 7, out of memory at depth 10 (hence pydantic >= 2.7).
    from eqx_msg._tree import MAX_NESTING

    tree: object = 1
    for _ in range(MAX_NESTING - 1):
        tree = [tree]
    data = eqx_msg.dumps(tree)
    old = signal.signal(signal.SIGALRM, _too_slow)
    signal.alarm(30)
    try:
        header = eqx_msg.header(data)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert header.tree.t == "list"


def _too_slow(signum, frame):
    raise AssertionError("validating the header took more than 30 s")


def test_leaf_kinds_and_node_tags_are_one_list_each():
    import typing

    from eqx_msg import _header, _record, _tree

    assert set(typing.get_args(_header.LeafKind)) == _record.KINDS
    tags = {v for k, v in vars(_tree.Tag).items() if not k.startswith("_")}
    node_models = typing.get_args(typing.get_args(_header.Node)[1])[0]
    modelled = {
        typing.get_args(m.model_fields["t"].annotation)[0] for m in typing.get_args(node_models)
    }
    assert modelled == tags
