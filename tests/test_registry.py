"""The registry: what a file may name, how users add to it, and what is never resolved."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg
from eqx_msg import _registry


def my_activation(x):
    return jnp.maximum(x, 0.1 * x)


class Head(eqx.Module):
    w: jax.Array
    act: object = eqx.field(static=True)


def test_user_function_needs_allow_then_round_trips():
    data = eqx_msg.dumps(Head(jnp.ones(2), my_activation))
    with pytest.raises(eqx_msg.UnknownTypeError, match="my_activation"):
        eqx_msg.loads(data, allow=[Head])
    loaded = eqx_msg.loads(data, allow=[Head, my_activation])
    assert loaded.act is my_activation


def test_register_under_a_stable_name():
    class Renamed(eqx.Module):  # defined in a function: no importable name of its own
        w: jax.Array

    eqx_msg.register(Renamed, name="myproject.Renamed")
    data = eqx_msg.dumps({"m": Renamed(jnp.ones(1))})
    header = eqx_msg.header(data)
    assert header.tree.c[0].cls == "myproject.Renamed"
    assert type(eqx_msg.loads(data)["m"]) is Renamed


def test_allow_as_a_mapping_of_names():
    data = eqx_msg.dumps(Head(jnp.ones(2), jax.nn.relu))
    name = f"{Head.__module__}.{Head.__qualname__}"
    loaded = eqx_msg.loads(data, allow={name: Head})
    assert type(loaded) is Head


def test_register_refuses_objects_without_a_name():
    with pytest.raises(eqx_msg.UnserialisableError, match="name="):
        eqx_msg.register(lambda x: x)
    f = eqx_msg.register(lambda x: x, name="myproject.identity")
    assert eqx_msg.loads(eqx_msg.dumps({"f": f}))["f"] is f


def test_seeded_registry_holds_the_trusted_namespaces_only():
    _registry._seed()
    names = _registry._by_name
    assert names["jax._src.nn.functions.relu"] is jax.nn.relu
    assert names["equinox.nn._linear.Linear"] is eqx.nn.Linear
    for denied in ["builtins.eval", "builtins.exec", "builtins.open", "numpy.load", "numpy.save",
                   "numpy.memmap", "numpy.fromfile", "os.system", "subprocess.run"]:  # fmt: skip
        assert denied not in names, denied
    seeded = set(names) - set(_registry._user_names.values())  # minus what tests registered
    assert all(n.split(".")[0] in {"jax", "jaxlib", "numpy", "ml_dtypes", "equinox", "optax",
                                   "builtins", "collections"} for n in seeded)  # fmt: skip


def test_dtypes_and_scalar_types_in_static_fields(roundtrip):
    tree = Head(
        jnp.ones(1), (np.float32, jnp.bfloat16, np.dtype("int8"), jnp.dtype("float8_e4m3fn"))
    )
    loaded = roundtrip(tree, allow=[Head])
    assert loaded.act == tree.act
