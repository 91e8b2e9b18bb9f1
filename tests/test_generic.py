"""load(..., unknown="generic"): a model whose code this process does not have, loaded as generic
nodes that keep the class names, fields by name and the file's key paths; nothing imported or run."""

import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg

# Classes that exist only in the subprocess that saves (and loads back) the file.
USER_CODE = textwrap.dedent(
    """
    import collections, enum, sys
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np, eqx_msg

    class Mode(enum.Enum):
        FAST = 1

    def act(x):
        return x * 2

    class Inner(eqx.Module):
        b: jax.Array

    class Secret(eqx.Module):
        w: jax.Array
        inner: Inner
        n: int = eqx.field(static=True)
        f: object = eqx.field(static=True)
        mode: Mode = eqx.field(static=True)

        def __call__(self, x):
            return self.f(self.w * x) + self.inner.b

    Pair = collections.namedtuple("Pair", ["left", "right"])
    for obj in (Mode, act, Inner, Secret, Pair):
        eqx_msg.register(obj)

    def model():
        return {"m": Secret(jnp.arange(3.0), Inner(jnp.ones(3)), 4, act, Mode.FAST),
                "p": Pair(np.zeros(2), "x"), "lin": eqx.nn.Linear(2, 2, key=jax.random.key(0))}
    """
)


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", USER_CODE + textwrap.dedent(code)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("generic") / "user.eqx"
    _run(f"eqx_msg.save({str(path)!r}, model())")
    return path


def test_without_the_code_the_default_refuses_and_generic_loads(saved):
    with pytest.raises(eqx_msg.UnknownTypeError, match="__main__.Secret"):
        eqx_msg.load(saved)
    with pytest.warns(UserWarning, match=r"__main__.Inner, __main__.Mode, __main__.Pair") as w:
        tree = eqx_msg.load(saved, unknown="generic")
    assert "nothing imported" in str(w[0].message)
    m = tree["m"]
    assert isinstance(m, eqx_msg.GenericNode) and m.cls_name == "__main__.Secret"
    np.testing.assert_array_equal(m.w, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(m.inner.b, np.ones(3))
    assert m.n == 4 and m.static["n"] == 4
    assert m.f == eqx_msg.UnknownName("__main__.act") and m.mode.name == "__main__.Mode.FAST"
    with pytest.raises(eqx_msg.UnknownTypeError, match="cannot run"):
        m.f(1.0)
    assert isinstance(tree["lin"], eqx.nn.Linear)  # trusted classes load as themselves
    pair = tree["p"]
    assert pair.cls_name == "__main__.Pair" and pair.right == "x" and pair.left.shape == (2,)
    with pytest.raises(AttributeError, match="no field 'nope'"):
        m.nope  # noqa: B018


def test_generic_nodes_keep_the_files_key_paths_and_work_with_jax(saved):
    with pytest.warns(UserWarning):
        tree = eqx_msg.load(saved, unknown="generic")
    paths = sorted(
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    )
    with eqx_msg.open(saved) as reader:
        assert sorted(reader.keys()) == [p for p in paths if p != "['p'].right"]
    doubled = jax.tree.map(lambda x: x * 2 if eqx.is_array(x) else x, tree)
    np.testing.assert_array_equal(doubled["m"].w, [0.0, 2.0, 4.0])
    assert isinstance(doubled["m"], eqx_msg.GenericNode) and doubled["m"].n == 4
    params, _ = eqx.partition(tree, eqx.is_array)
    assert params["m"].inner.b.shape == (3,)
    with pytest.warns(UserWarning):
        assert jax.tree.structure(eqx_msg.loads(saved.read_bytes(), unknown="generic")) == jax.tree.structure(tree)  # fmt: skip
        with eqx_msg.open(saved) as reader:
            assert jax.tree.structure(reader.load(unknown="generic")) == jax.tree.structure(tree)


def test_a_generic_model_saves_back_as_the_file_it_came_from(saved, tmp_path):
    with pytest.warns(UserWarning):
        tree = eqx_msg.load(saved, unknown="generic")
    tree["m"].children[".w"] = jnp.full(3, 7.0)  # e.g. weights changed by a conversion
    back = tmp_path / "back.eqx"
    eqx_msg.save(back, tree)
    before, after = eqx_msg.header(saved), eqx_msg.header(back)
    assert after.tree == before.tree and after.keys() == before.keys()
    # Where the code exists, the converted file loads as the real classes, and runs.
    out = _run(
        f"""
        t = eqx_msg.load({str(back)!r})
        assert type(t["m"]) is Secret and t["m"].f is act and t["m"].mode is Mode.FAST
        print(t["m"](jnp.float32(1.0)).tolist(), type(t["p"]).__name__)
        """
    )
    assert out.split() == ["[15.0,", "15.0,", "15.0]", "Pair"]


def test_unknown_takes_two_values():
    data = eqx_msg.dumps({"w": np.ones(2)})
    with pytest.raises(ValueError, match="'error' or 'generic'"):
        eqx_msg.loads(data, unknown="skip")
    assert eqx_msg.loads(data, unknown="generic")["w"].shape == (2,)
