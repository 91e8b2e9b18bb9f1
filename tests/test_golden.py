"""Golden files: every file a past writer made still loads to the same tree, and today's writer makes
the newest one again (apart from the `writer` versions it records).

tests/golden.py builds the tree; tests/fixtures/ holds one file per writer generation, never rewritten.
"""

from pathlib import Path

import golden
import jax
import ml_dtypes
import numpy as np
import pytest

import eqx_msg

from conftest import assert_same_tree, parts

FIXTURES = Path(__file__).parent / "fixtures"
EVERY_DTYPE = FIXTURES / "v1_every_dtype.eqx"  # one leaf per dtype name: golden.every_dtype()
GOLDEN = sorted(set(FIXTURES.glob("v1_*.eqx")) - {EVERY_DTYPE})  # golden.tree(), one per generation
NEWEST = FIXTURES / "v1_static_names.eqx"  # what today's writer makes
# The generations written with checksums (FORMAT.md section 9).
CHECKSUMMED = {"v1_checksums.eqx", "v1_static_names.eqx"}


def test_every_writer_generation_has_a_golden_file():
    assert {p.name for p in GOLDEN} >= {
        "v1_qualnames.eqx", "v1_public_names.eqx", "v1_node_keys.eqx", "v1_checksums.eqx",
        NEWEST.name,
    }  # fmt: skip


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_files_verify_when_written_with_checksums(path):
    if path.name in CHECKSUMMED:
        eqx_msg.verify(path)
        eqx_msg.load(path, verify=True)
        header = eqx_msg.header(str(path))
        assert header.header_crc32c is not None and len(header.leaf_crc32c or b"") == 4 * 39
        return
    with pytest.raises(eqx_msg.ChecksumError, match="has no checksums"):
        eqx_msg.verify(path)
    assert eqx_msg.header(str(path)).header_crc32c is None


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


def test_todays_writer_makes_the_newest_golden_file():
    fresh = parts(eqx_msg.dumps(golden.tree(), metadata=golden.METADATA))
    saved = parts(NEWEST.read_bytes())
    assert fresh[0] == saved[0]  # magic and version
    fresh_header, saved_header = dict(fresh[1]), dict(saved[1])
    assert set(fresh_header.pop("writer")) == set(saved_header.pop("writer"))
    # The header checksum covers the writer's versions too, which differ between environments.
    assert (fresh_header.pop("header_crc32c", None) is None) == (
        saved_header.pop("header_crc32c", None) is None
    )
    for key in saved_header:
        assert fresh_header[key] == saved_header[key], (
            f"header[{key!r}] differs from {NEWEST.name}: if the change is deliberate, keep the old "
            "file, add a new one with tests/golden.py and point NEWEST at it"
        )
    assert fresh_header == saved_header
    assert fresh[2] == saved[2]  # the data section, byte for byte


def test_the_every_dtype_file_holds_the_whole_dtype_table():
    assert eqx_msg._core.dtype_names() == golden.EVERY_DTYPE  # the table grew: add a new file
    header = eqx_msg.header(str(EVERY_DTYPE))
    assert [(leaf.path, leaf.dtype) for leaf in header.leaves] == [
        (f"[{name!r}]", name) for name in golden.EVERY_DTYPE
    ]


@pytest.mark.parametrize("name", golden.EVERY_DTYPE)
def test_every_dtype_file_leaf_reads_exactly_or_names_what_is_missing(name):
    with eqx_msg.open(EVERY_DTYPE) as reader:
        if not hasattr(ml_dtypes, name) and not hasattr(np, name):
            with pytest.raises(
                eqx_msg.DTypeError, match=rf"{name} .*ml_dtypes {ml_dtypes.__version__}"
            ):
                reader[f"[{name!r}]"]
            with pytest.raises(eqx_msg.DTypeError, match=rf"\[{name!r}\]: dtype {name} "):
                eqx_msg.load(EVERY_DTYPE, as_numpy=True)  # the whole tree: that leaf, by path
            return
        value = reader[f"[{name!r}]"]
    assert value.dtype.name == name and value.shape == (2, 3)
    expected = golden.exact_values(6, name).reshape(2, 3)
    np.testing.assert_array_equal(value.astype(expected.dtype), expected)


def test_todays_writer_makes_the_every_dtype_file_again():
    lacking = [n for n in golden.EVERY_DTYPE if not hasattr(ml_dtypes, n) and not hasattr(np, n)]
    if lacking:
        pytest.skip(f"ml_dtypes {ml_dtypes.__version__} lacks {lacking}: cannot build the tree")
    fresh = parts(eqx_msg.dumps(golden.every_dtype()))
    saved = parts(EVERY_DTYPE.read_bytes())
    assert set(fresh[1].pop("writer")) == set(saved[1].pop("writer"))
    # Written before checksums: today's file is the same but for them (and so where data starts).
    assert fresh[1].pop("header_crc32c") and len(fresh[1].pop("leaf_crc32c")) == 4 * len(
        golden.EVERY_DTYPE
    )
    assert fresh == saved


def test_filter_on_a_file_whose_nodes_do_not_name_their_children():
    old = FIXTURES / "v1_public_names.eqx"  # written before nodes had `keys`
    part = eqx_msg.load(old, filter={"model": True, "numpy": False})
    assert isinstance(part["model"].linear.weight, jax.Array)
    assert isinstance(part["numpy"]["int8"], jax.ShapeDtypeStruct)
    with pytest.raises(eqx_msg.KeyPathError, match="modl"):
        eqx_msg.load(old, filter={"modl": True})
