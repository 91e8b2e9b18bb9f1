"""Golden files: every file a past writer made still loads to the same tree, and today's writer makes
the newest one again (apart from the `writer` versions it records).

tests/golden.py builds the tree; tests/fixtures/ holds one file per writer generation, never rewritten.
"""

import struct
from pathlib import Path

import golden
import jax
import msgpack
import numpy as np
import pytest

import eqx_msg

from conftest import assert_same_tree

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = sorted(FIXTURES.glob("v1_*.eqx"))
NEWEST = FIXTURES / "v1_node_keys.eqx"  # what today's writer makes


def test_every_writer_generation_has_a_golden_file():
    assert {p.name for p in GOLDEN} >= {"v1_qualnames.eqx", "v1_public_names.eqx", NEWEST.name}


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_file_loads_to_the_golden_tree(path):
    assert_same_tree(golden.tree(), eqx_msg.load(path))
    assert_same_tree(golden.tree(), eqx_msg.loads(path.read_bytes()))
    assert eqx_msg.header(str(path)).metadata == golden.METADATA
    with eqx_msg.open(path) as reader:
        abstract = reader.abstract()
        expected = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "dtype") else x,
            golden.tree(),
        )
        assert jax.tree.structure(abstract) == jax.tree.structure(expected)
        np.testing.assert_array_equal(reader["['jax']['float32']"], golden.ramp((2, 4), np.float32))


def _parts(data: bytes) -> tuple[bytes, dict, bytes]:
    """(prefix, header map, data section) of an eqx_msg file."""
    (header_len,) = struct.unpack_from("<Q", data, 8)
    header = msgpack.unpackb(data[16 : 16 + header_len], raw=False, strict_map_key=False)
    start = -(-(16 + header_len) // header["alignment"]) * header["alignment"]
    return data[:8], header, data[start:]


def test_todays_writer_makes_the_newest_golden_file():
    fresh = _parts(eqx_msg.dumps(golden.tree(), metadata=golden.METADATA))
    saved = _parts(NEWEST.read_bytes())
    assert fresh[0] == saved[0]  # magic and version
    fresh_header, saved_header = dict(fresh[1]), dict(saved[1])
    assert set(fresh_header.pop("writer")) == set(saved_header.pop("writer"))
    for key in saved_header:
        assert fresh_header[key] == saved_header[key], (
            f"header[{key!r}] differs from {NEWEST.name}: if the change is deliberate, keep the old "
            "file, add a new one with tests/golden.py and point NEWEST at it"
        )
    assert fresh_header == saved_header
    assert fresh[2] == saved[2]  # the data section, byte for byte


def test_filter_on_a_file_whose_nodes_do_not_name_their_children():
    old = FIXTURES / "v1_public_names.eqx"  # written before nodes had `keys`
    part = eqx_msg.load(old, filter={"model": True, "numpy": False})
    assert isinstance(part["model"].linear.weight, jax.Array)
    assert isinstance(part["numpy"]["int8"], jax.ShapeDtypeStruct)
    with pytest.raises(eqx_msg.KeyPathError, match="modl"):
        eqx_msg.load(old, filter={"modl": True})
