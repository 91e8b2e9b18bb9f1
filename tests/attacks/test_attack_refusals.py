"""Each hostile file of `hostile.py` is refused with an `EqxMsgError`, and has no effect: no file or
directory appears, no output, no callback, no debugger, and nothing the file chose runs when an
allowed model is called. One test per attack class of docs/SECURITY.md."""

import collections
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import hostile
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg

HERE = Path(__file__).resolve().parent


def test_the_jit_dump_chain_is_refused_and_writes_nothing(tmp_path):
    target = tmp_path / "dumped"
    data = hostile.jit_dump(str(target))
    path = tmp_path / "m.eqx"
    path.write_bytes(data)
    for load in (lambda: eqx_msg.loads(data), lambda: eqx_msg.load(path)):
        with pytest.raises((eqx_msg.UnknownTypeError, eqx_msg.HeaderError)):
            load()  # (builtins.min bound by a partial, or jax.jit: whichever it meets first)
    with (
        eqx_msg.open(path) as reader,
        pytest.raises((eqx_msg.UnknownTypeError, eqx_msg.HeaderError)),
    ):
        reader.abstract()
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx"]


@pytest.mark.parametrize("name", list(hostile.ACTING))
def test_a_composition_that_would_act_when_called_is_refused_at_load(name, capfd):
    with pytest.raises(eqx_msg.EqxMsgError) as err:
        eqx_msg.loads(hostile.acting(name))
    assert isinstance(err.value, eqx_msg.UnknownTypeError | eqx_msg.HeaderError), err.value
    assert capfd.readouterr() == ("", "")  # nothing printed, no callback ran


def test_the_registry_refuses_functions_that_take_functions_but_keeps_leaf_like_ones():
    from eqx_msg import _registry

    for name in ("jax.jit", "jax.grad", "jax.vmap", "jax.tree_util.tree_map", "jax.lax.scan",
                 "jax.lax.cond", "jax.lax.while_loop", "jax.numpy.vectorize", "jax.numpy.piecewise",
                 "numpy.vectorize", "numpy.frompyfunc", "numpy.apply_along_axis", "numpy.bmat",
                 "equinox.filter_jit", "equinox.error_if", "equinox.tree_at", "jax.pure_callback",
                 "jax.debug.callback", "optax.chain", "optax.schedules.join_schedules",
                 "numpy.copyto", "numpy.put"):  # fmt: skip
        with pytest.raises(eqx_msg.UnknownTypeError):
            _registry.resolve(name, {}, "")
    for name in ("jax.nn.relu", "jax.nn.gelu", "jax.numpy.tanh", "jax.numpy.add", "numpy.sin",
                 "math.sqrt", "jax.nn.initializers.he_normal", "jax.random.normal",
                 "equinox.is_array", "optax.losses.l2_loss", "jax.tree_util.Partial",
                 "equinox.nn.Linear", "optax.ScaleByAdamState"):  # fmt: skip
        assert _registry.resolve(name, {}, "") is not None


def test_a_model_calling_a_leaf_like_function_does_only_that(tmp_path):
    model = eqx.nn.Sequential([eqx.nn.Lambda(functools.partial(jnp.multiply, 2.0)),
                               eqx.nn.Lambda(jax.nn.relu)])  # fmt: skip
    loaded = eqx_msg.loads(eqx_msg.dumps(model))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        out = loaded(jnp.array([-1.0, 3.0]))
    finally:
        os.chdir(cwd)
    assert jnp.array_equal(out, jnp.array([0.0, 6.0]))
    assert list(tmp_path.iterdir()) == []


def test_saving_what_a_file_could_not_load_is_refused_at_save():
    for fn in (functools.partial(jax.numpy.add, jnp.sin), functools.partial(jnp.sum, where={"a": 1}),
               jax.jit, jax.tree_util.tree_map):  # fmt: skip
        with pytest.raises(eqx_msg.UnserialisableError):
            eqx_msg.dumps(eqx.nn.Lambda(fn))


def test_a_file_cannot_set_what_a_module_says_it_is():
    with pytest.raises(eqx_msg.HeaderError, match="wrapper fields"):
        eqx_msg.loads(hostile.wrapper_fields())


def test_a_defaultdict_factory_is_a_builtin_class():
    with pytest.raises(eqx_msg.HeaderError, match="factory must be a builtin class"):
        eqx_msg.loads(hostile.defaultdict_factory())
    tree = {"d": collections.defaultdict(list, {"a": [1]})}
    assert eqx_msg.loads(eqx_msg.dumps(tree))["d"]["missing"] == []


@pytest.mark.parametrize("where", ["set", "dict", "metadata"])
def test_keys_sharing_one_hash_are_refused(where):
    data = hostile.hash_collisions(4096, where)
    read = eqx_msg.header if where == "metadata" else eqx_msg.loads
    with pytest.raises(eqx_msg.LimitError, match="share one hash value"):
        read(data)
    assert eqx_msg.loads(eqx_msg.dumps({"s": {(-1,), (-2,), (-1, -2)}}))["s"] == {
        (-1,),
        (-2,),
        (-1, -2),
    }


def test_a_long_key_above_many_nodes_loads_and_names_paths_in_errors():
    data = hostile.long_key_paths(2000)
    loaded = eqx_msg.loads(data)
    (key,) = loaded
    assert len(key) == 2000 and loaded[key] == [None] * 2000


def test_a_typo_in_a_reader_key_does_not_make_every_key_path(tmp_path):
    path = tmp_path / "m.eqx"
    path.write_bytes(hostile.key_path_memory(2000))
    with eqx_msg.open(path) as reader, pytest.raises(eqx_msg.KeyPathError, match="not a key path"):
        reader["['typo']"]


def test_a_huge_mesh_is_refused_without_multiplying_it_out(tmp_path):
    data = hostile.big_mesh(2000)
    path = tmp_path / "m.eqx"
    path.write_bytes(data)
    for read in (eqx_msg.open, eqx_msg.load, eqx_msg.header):  # the core refuses it at open
        with pytest.raises(eqx_msg.HeaderError, match="device_ids.*more places than that"):
            read(path)


@pytest.mark.parametrize("node", ["namedtuple", "partial"])
def test_zero_byte_rows_are_never_iterated(node):
    with pytest.raises(eqx_msg.HeaderError, match="namedtuple class|Partial node"):
        eqx_msg.loads(hostile.zero_byte_rows(10**9, node))


@pytest.mark.parametrize("value", [float("inf"), 1e300, -1, 2**64 - 1, "3"])
def test_a_static_ndarray_shape_that_is_not_a_small_int_is_a_header_error(value):
    data = hostile.huge_static_shape(value)
    for read in (eqx_msg.loads, lambda d: eqx_msg.loads(d, as_numpy=True)):
        with pytest.raises(eqx_msg.HeaderError, match="static ndarray"):
            read(data)


def test_the_header_is_decoded_from_what_was_checked_not_from_the_live_map(tmp_path):
    # A same-length edit after open (a shared map, no truncation) changed later decodes.
    path = tmp_path / "m.eqx"
    eqx_msg.save(path, {"w": np.arange(16, dtype=np.int32)}, metadata={"who": "first"})
    with eqx_msg.open(path) as reader:
        data = bytearray(path.read_bytes())
        at = data.index(b"first")
        data[at : at + 5] = b"AAAAA"
        shape = data.index(b"\x91\x10")  # shape [16] -> [127] (same length)
        data[shape + 1] = 0x7F
        with open(path, "r+b") as f:
            f.write(data)
        assert reader.metadata == {"who": "first"}
        assert reader.header.leaves[0].shape == [16]
        assert reader.get("['w']").shape == (16,)


def test_the_earlier_findings_stay_refused():
    with pytest.raises(eqx_msg.HeaderError, match="node types of their own"):
        eqx_msg.loads(hostile.builtin_container_node())  # once a SIGSEGV in jaxlib
    with pytest.raises(eqx_msg.EqxMsgError):
        eqx_msg.header(hostile.empty_mesh())  # once an abort in jaxlib


def test_the_attack_files_can_be_written_out_to_try_by_hand(tmp_path):
    run = subprocess.run([sys.executable, str(HERE / "hostile.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(list(tmp_path.glob("*.eqx"))) >= len(hostile.ATTACKS) + len(hostile.ACTING)


def test_a_spawned_process_loading_every_attack_file_survives(tmp_path):
    """No attack file crashes the interpreter (a segfault or abort would kill this child)."""
    script = textwrap.dedent(f"""
        import sys, pathlib
        sys.path.insert(0, {str(HERE)!r})
        import hostile, eqx_msg
        hostile.main([{str(tmp_path)!r}])
        for p in sorted(pathlib.Path({str(tmp_path)!r}).glob("*.eqx")):
            for kwargs in ({{}}, {{"sharding": "saved"}}, {{"as_numpy": True}}):
                try:
                    eqx_msg.load(p, **kwargs)
                except eqx_msg.EqxMsgError:
                    pass
        print("survived")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, check=False)  # fmt: skip
    assert run.returncode == 0 and "survived" in run.stdout, run.stderr[-3000:]
