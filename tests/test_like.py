"""like=: the structure comes from a given pytree; every mismatch is reported by key path."""

import os
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest

import eqx_msg

KEY = jax.random.key(0)


class Secret(eqx.Module):
    """A class the registry does not know: like= must not need it."""

    w: jax.Array
    b: jax.Array


def test_like_uses_the_given_structure_without_the_registry(as_another_process):
    model = Secret(jnp.ones((2, 3)), jnp.zeros(3))
    data = eqx_msg.dumps(model)
    as_another_process()
    with pytest.raises(eqx_msg.UnknownTypeError):
        eqx_msg.loads(data)
    skeleton = eqx.filter_eval_shape(lambda: Secret(jnp.ones((2, 3)), jnp.zeros(3)))
    loaded = eqx_msg.loads(data, like=skeleton)
    assert type(loaded) is Secret and jnp.array_equal(loaded.w, model.w)


def test_like_with_concrete_model():
    mlp = eqx.nn.MLP(3, 2, 4, 1, key=KEY)
    other = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(1))
    loaded = eqx_msg.loads(eqx_msg.dumps(mlp), like=other)
    assert jnp.array_equal(loaded.layers[0].weight, mlp.layers[0].weight)


def test_like_reports_every_mismatch():
    data = eqx_msg.dumps(
        {"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.int32), "extra": np.ones(1)}
    )
    like = {"a": np.ones((3, 2), np.float32), "b": np.ones(4, np.float32), "missing": np.ones(1)}
    with pytest.raises(eqx_msg.StructureMismatchError) as info:
        eqx_msg.loads(data, like=like)
    message = str(info.value)
    assert "['a']" in message and "(3, 2)" in message and "(2, 3)" in message
    assert "['b']" in message and "int32" in message and "float32" in message
    assert "['missing']: in like= but not in the file" in message
    assert "['extra']: in the file but not in like=" in message
    assert "4 problems" in message


def test_renamed_key_is_never_silent():
    data = eqx_msg.dumps({"weight": np.ones(2)})
    with pytest.raises(eqx_msg.StructureMismatchError, match="weight"):
        eqx_msg.loads(data, like={"weights": np.ones(2)})


def test_like_keeps_python_value_leaves_from_the_file():
    data = eqx_msg.dumps({"lr": 0.5, "w": np.ones(2)})
    loaded = eqx_msg.loads(data, like={"lr": 0.1, "w": jax.ShapeDtypeStruct((2,), np.float64)})
    assert loaded["lr"] == 0.5


class BlockV1(eqx.Module):
    a: jax.Array
    b: jax.Array


class BlockReordered(eqx.Module):  # the same class after its fields were reordered
    b: jax.Array
    a: jax.Array


class BlockShrunk(eqx.Module):  # ... after a field was removed
    a: jax.Array


class BlockGrown(eqx.Module):  # ... after a field was added
    a: jax.Array
    b: jax.Array
    c: jax.Array


NAME = f"{BlockV1.__module__}.{BlockV1.__qualname__}"


@pytest.mark.parametrize("now", [BlockReordered, BlockShrunk, BlockGrown])
def test_a_class_that_changed_since_saving_is_never_rebuilt_silently(now):
    data = eqx_msg.dumps({"block": BlockV1(jnp.ones(3), jnp.zeros(2))})
    with pytest.raises(eqx_msg.StructureMismatchError, match=r"\['block'\].*like=") as info:
        eqx_msg.loads(data, allow={NAME: now})
    assert "'.a', '.b'" in str(info.value)  # the file's fields are named


def test_like_maps_a_reordered_class_by_key_path():
    data = eqx_msg.dumps({"block": BlockV1(jnp.ones(3), jnp.zeros(2))})
    loaded = eqx_msg.loads(data, like={"block": BlockReordered(jnp.zeros(2), jnp.ones(3))})
    assert jnp.array_equal(loaded["block"].a, jnp.ones(3))
    assert jnp.array_equal(loaded["block"].b, jnp.zeros(2))


def test_namedtuple_fields_that_changed_are_refused():
    import collections

    Old = collections.namedtuple("Old", ["lr", "count"])
    New = collections.namedtuple("New", ["count", "lr"])
    eqx_msg.register(Old, name="tests.State")
    data = eqx_msg.dumps({"state": Old(np.ones(1), np.zeros(1))})
    with pytest.raises(eqx_msg.StructureMismatchError, match="'lr', 'count'"):
        eqx_msg.loads(data, allow={"tests.State": New})
    assert type(eqx_msg.loads(data)["state"]) is Old


def test_like_warns_when_its_static_fields_differ_from_the_files():
    data = eqx_msg.dumps(
        {"norm": eqx.nn.LayerNorm(4, eps=1e-2), "mlp": eqx.nn.MLP(2, 2, 4, 1, key=KEY)}
    )
    same = {"norm": eqx.nn.LayerNorm(4, eps=1e-2), "mlp": eqx.nn.MLP(2, 2, 4, 1, key=KEY)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same statics: silent
        eqx_msg.loads(data, like=same)
        eqx_msg.loads(data, like=eqx.filter_eval_shape(lambda: same))
    other = {
        "norm": eqx.nn.LayerNorm(4),
        "mlp": eqx.nn.MLP(2, 2, 4, 1, activation=jnp.tanh, key=KEY),
    }
    with pytest.warns(
        UserWarning, match=r"static fields .* of \['norm'\] \(equinox.nn.LayerNorm\);"
    ) as caught:
        loaded = eqx_msg.loads(data, like=other)
    assert caught[0].filename == __file__  # the caller's line, not eqx_msg's
    assert loaded["norm"].eps == 1e-5  # like='s, as documented; the warning says so
    assert loaded["mlp"].activation is jax.nn.relu  # a field, not static: a leaf, from the file


def test_like_and_filter_that_jax_cannot_flatten_are_eqx_msg_errors(tmp_path):
    tree = {1: np.ones(2), "a": np.zeros(1)}  # eqx_msg stores it; JAX cannot sort its keys
    path = tmp_path / "m.eqx"
    eqx_msg.save(path, tree)
    assert list(eqx_msg.load(path)) == [1, "a"]
    with pytest.raises(eqx_msg.StructureMismatchError, match="like= is not a pytree JAX can"):
        eqx_msg.load(path, like=tree)
    with pytest.raises(eqx_msg.KeyPathError, match="filter= is not a pytree JAX can"):
        eqx_msg.load(path, filter={1: True, "a": False})


class WithStatics(eqx.Module):
    w: jax.Array
    table: dict = eqx.field(static=True)
    names: frozenset = eqx.field(static=True)


def test_like_does_not_warn_for_static_dicts_in_another_order_or_sets():
    eqx_msg.register(WithStatics)
    saved = WithStatics(jnp.ones(2), {"a": 1, "b": 2}, frozenset({"alpha", "beta", "gamma"}))
    data = eqx_msg.dumps(saved)
    same = WithStatics(jnp.ones(2), {"b": 2, "a": 1}, frozenset({"gamma", "beta", "alpha"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eqx_msg.loads(data, like=same)
    with pytest.warns(UserWarning, match="static fields"):
        eqx_msg.loads(data, like=WithStatics(jnp.ones(2), {"a": 1, "b": 3}, same.names))


def test_a_set_is_written_in_the_same_order_in_every_process():
    code = (
        "import functools, sys, eqx_msg; "
        "sys.stdout.write(eqx_msg.dumps({'f': functools.partial(max, "
        "frozenset({'alpha', 'beta', 'gamma', 'delta', 'epsilon'}))}).hex())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1


class _Config(pydantic.BaseModel):
    width: int
    depth: int


def _make(config: _Config, key: jax.Array) -> eqx.nn.MLP:
    return eqx.nn.MLP(2, 2, config.width, config.depth, key=key)


def test_like_may_be_a_function_of_the_files_metadata(tmp_path):
    # The docs' pattern in one call: hyperparameters saved as metadata build the skeleton, under
    # filter_eval_shape (no weights made twice), and the file's weights fill it by key path.
    config = _Config(width=16, depth=2)
    model = _make(config, jax.random.key(3))
    path = tmp_path / "m.eqx"
    eqx_msg.save(path, model, metadata=config.model_dump())
    seen = []

    def skeleton(meta):
        seen.append(meta)
        return eqx.filter_eval_shape(_make, _Config(**meta), jax.random.key(0))

    for loaded in (
        eqx_msg.load(path, like=skeleton),
        eqx_msg.loads(path.read_bytes(), like=skeleton),
        eqx_msg.open(path).load(like=skeleton),
    ):
        assert jax.tree.structure(loaded) == jax.tree.structure(model)
        assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(model)) if eqx.is_array(a))  # fmt: skip
    assert seen == [config.model_dump()] * 3
    # A Module is callable, but it is a pytree: it is the skeleton itself, never called.
    assert jax.tree.structure(eqx_msg.load(path, like=model)) == jax.tree.structure(model)
    wrong = lambda meta: eqx.filter_eval_shape(_make, _Config(width=8, depth=2), jax.random.key(0))  # noqa: E731
    with pytest.raises(eqx_msg.StructureMismatchError, match="shape"):
        eqx_msg.load(path, like=wrong)


def test_strict_false_takes_what_matches_and_keeps_like_elsewhere(tmp_path):
    model = eqx.nn.MLP(2, 2, 8, 1, key=KEY)
    path = tmp_path / "m.eqx"
    eqx_msg.save(path, model)
    params, static = eqx.partition(model, eqx.is_array)
    with pytest.raises(eqx_msg.StructureMismatchError):
        eqx_msg.load(path, like=params)  # all or nothing by default
    with pytest.warns(UserWarning, match=r"strict=False: \d+ leaves did not match"):
        half = eqx_msg.load(path, like=params, strict=False)  # a params-only partition half
    for a, b in zip(jax.tree.leaves(half), jax.tree.leaves(params)):
        assert jnp.array_equal(a, b)
    x = jnp.ones(2)
    assert jnp.array_equal(eqx.combine(half, static)(x), model(x))
    # A model that changed: what fits comes from the file, the rest stays like='s, all reported.
    saved = {"w": np.arange(4.0), "b": np.ones(3), "old": np.zeros(2)}
    eqx_msg.save(path, saved)
    now = {"w": np.zeros(4), "b": np.zeros(5), "new": np.full(2, 9.0)}
    with pytest.warns(UserWarning) as w:
        got = eqx_msg.load(path, like=now, strict=False)
    message = str(w[0].message)
    assert (
        "['b']: like= has shape (5,)" in message
        and "['new']: in like= but not in the file" in message
    )
    assert "['old']: in the file but not in like=" in message
    np.testing.assert_array_equal(got["w"], saved["w"])
    assert got["b"] is now["b"] and got["new"] is now["new"] and "old" not in got
    with pytest.raises(ValueError, match="strict=False applies to like="):
        eqx_msg.load(path, strict=False)
