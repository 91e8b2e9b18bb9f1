"""Every eqx.nn layer saves, loads and runs as it did; functions that have no name are stored as
placeholders only when asked (save(..., unstorable="placeholder")) and then need like=."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg

K = jax.random.key(0)


def _layers():
    """Each eqx.nn layer, as Equinox documents making it, with an input it takes."""
    x1, x2, x3 = jnp.ones((2, 8)), jnp.ones((2, 8, 8)), jnp.ones((2, 6, 6, 6))
    bn, bn_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(2, "batch", mode="batch")
    spec, spec_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(eqx.nn.Linear(3, 3, key=K), "weight", key=K)  # fmt: skip
    return {
        "Linear": (eqx.nn.Linear(3, 4, key=K), jnp.ones(3)),
        "Identity": (eqx.nn.Identity(), jnp.ones(3)),
        "MLP": (eqx.nn.MLP(3, 2, 4, 2, activation=jax.nn.gelu, key=K), jnp.ones(3)),
        "Conv1d": (eqx.nn.Conv1d(2, 3, 3, key=K), x1),
        "Conv2d": (eqx.nn.Conv2d(2, 3, 3, padding="SAME", key=K), x2),
        "Conv3d": (eqx.nn.Conv3d(2, 3, 3, key=K), x3),
        "ConvTranspose1d": (eqx.nn.ConvTranspose1d(2, 3, 3, key=K), x1),
        "ConvTranspose2d": (eqx.nn.ConvTranspose2d(2, 3, 3, key=K), x2),
        "ConvTranspose3d": (eqx.nn.ConvTranspose3d(2, 3, 3, key=K), x3),
        "Embedding": (eqx.nn.Embedding(10, 4, key=K), jnp.asarray(3)),
        "LayerNorm": (eqx.nn.LayerNorm(4, eps=1e-3), jnp.arange(4.0)),
        "RMSNorm": (eqx.nn.RMSNorm(4), jnp.arange(4.0)),
        "GroupNorm": (eqx.nn.GroupNorm(2, 4), jnp.ones((4, 3))),
        "Dropout": (eqx.nn.Dropout(0.5, inference=True), jnp.ones(3)),
        "GRUCell": (eqx.nn.GRUCell(3, 4, key=K), (jnp.ones(3), jnp.zeros(4))),
        "LSTMCell": (eqx.nn.LSTMCell(3, 4, key=K), (jnp.ones(3), (jnp.zeros(4), jnp.zeros(4)))),
        "MultiheadAttention": (eqx.nn.MultiheadAttention(2, 8, key=K), (jnp.ones((5, 8)),) * 3),
        "RotaryPositionalEmbedding": (eqx.nn.RotaryPositionalEmbedding(8), jnp.ones((5, 8))),
        "PReLU": (eqx.nn.PReLU(), jnp.linspace(-1, 1, 5)),
        "MaxPool1d": (eqx.nn.MaxPool1d(2), x1),
        "MaxPool2d": (eqx.nn.MaxPool2d(2), x2),
        "MaxPool3d": (eqx.nn.MaxPool3d(2), x3),
        "AvgPool1d": (eqx.nn.AvgPool1d(2), x1),
        "AvgPool2d": (eqx.nn.AvgPool2d(2), x2),
        "AvgPool3d": (eqx.nn.AvgPool3d(2), x3),
        "AdaptiveAvgPool1d": (eqx.nn.AdaptiveAvgPool1d(2), x1),
        "AdaptiveAvgPool2d": (eqx.nn.AdaptiveAvgPool2d((2, 2)), x2),
        "AdaptiveAvgPool3d": (eqx.nn.AdaptiveAvgPool3d((2, 2, 2)), x3),
        "AdaptiveMaxPool1d": (eqx.nn.AdaptiveMaxPool1d(2), x1),
        "AdaptiveMaxPool2d": (eqx.nn.AdaptiveMaxPool2d((2, 2)), x2),
        "AdaptiveMaxPool3d": (eqx.nn.AdaptiveMaxPool3d((2, 2, 2)), x3),
        "Pool": (eqx.nn.Pool(-jnp.inf, jax.lax.max, 1, 2), x1),
        "Sequential": (
            eqx.nn.Sequential([eqx.nn.Linear(3, 3, key=K), eqx.nn.Lambda(jax.nn.relu)]),
            jnp.ones(3),
        ),  # fmt: skip
        "Lambda": (eqx.nn.Lambda(jnp.tanh), jnp.ones(3)),
        "WeightNorm": (eqx.nn.WeightNorm(eqx.nn.Linear(3, 4, key=K)), jnp.ones(3)),
        "BatchNorm": ((bn, bn_state), jnp.ones(2)),
        "SpectralNorm": ((spec, spec_state), jnp.ones(3)),
        "Shared": (_shared(), jnp.ones(3)),
    }


def _tied_where(pair):
    return pair[1].weight


def _tied_get(pair):
    return pair[0].weight


eqx_msg.register(_tied_where)
eqx_msg.register(_tied_get)


def _shared():
    """Two Linears with tied weights (eqx.nn.Shared; its where/get are module-level functions)."""
    pair = (eqx.nn.Linear(3, 3, key=K), eqx.nn.Linear(3, 3, key=jax.random.key(1)))
    return eqx.nn.Shared(pair, _tied_where, _tied_get)


def _call(layer, x):
    if isinstance(layer, tuple):  # a stateful layer and its state
        model, state = layer
        return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            jnp.stack([x, x + 1]), state
        )[0]
    if isinstance(layer, eqx.nn.Shared):
        first, second = layer()
        return second(first(x))
    if isinstance(layer, eqx.nn.MultiheadAttention | eqx.nn.GRUCell | eqx.nn.LSTMCell):
        return layer(*x)
    return layer(x)


LAYERS = _layers()


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_eqx_nn_layer_saves_loads_and_runs(name, tmp_path):
    layer, x = LAYERS[name]
    path = tmp_path / "layer.eqx"
    eqx_msg.save(path, layer)
    loaded = eqx_msg.load(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(layer)
    got, want = _call(loaded, x), _call(layer, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(g, w)


def test_the_layers_cover_eqx_nn():
    made = {type(layer[0] if isinstance(layer, tuple) else layer).__name__ for layer, _ in LAYERS.values()}  # fmt: skip
    layers = {
        n for n in dir(eqx.nn)
        if n[0].isupper() and isinstance(getattr(eqx.nn, n), type)
        and issubclass(getattr(eqx.nn, n), eqx.Module)
    }  # fmt: skip
    # Bases and helpers a user does not make as a layer: their subclasses above stand for them.
    bases = {"Conv", "ConvTranspose", "AdaptivePool", "StatefulLayer", "StateIndex", "State"}
    assert layers - bases - made == set()


def test_a_lambda_is_refused_unless_a_placeholder_is_asked_for(tmp_path):
    model = eqx.nn.Sequential([eqx.nn.Linear(3, 3, key=K), eqx.nn.Lambda(lambda x: x + 1)])
    with pytest.raises(eqx_msg.UnserialisableError, match=r"\.layers\[1\]\.fn: cannot store"):
        eqx_msg.dumps(model)
    path = tmp_path / "p.eqx"
    eqx_msg.save(path, model, unstorable="placeholder")
    assert eqx_msg.dumps_size(model, unstorable="placeholder") == path.stat().st_size
    with pytest.raises(eqx_msg.StructureMismatchError, match=r"\.layers\[1\]\.fn: the file holds a placeholder for the function .*<lambda> \(.*test_layers.py:\d+\)"):  # fmt: skip
        eqx_msg.load(path)
    loaded = eqx_msg.load(path, like=model)  # like= fills it: the model as it was saved
    assert loaded.layers[1].fn is model.layers[1].fn
    np.testing.assert_array_equal(loaded(jnp.ones(3)), model(jnp.ones(3)))
    np.testing.assert_array_equal(loaded.layers[0].weight, model.layers[0].weight)
    with pytest.raises(ValueError, match="'error' or 'placeholder'"):
        eqx_msg.dumps(model, unstorable="drop")


def test_a_jit_wrapper_and_a_closure_become_placeholders_too():
    scale = 3.0
    tree = {"jit": jax.jit(lambda x: x), "closure": lambda x: x * scale, "w": jnp.ones(2)}
    data = eqx_msg.dumps(tree, unstorable="placeholder")
    loaded = eqx_msg.loads(data, like=tree)
    assert loaded["closure"] is tree["closure"] and loaded["jit"] is tree["jit"]
    with pytest.raises(eqx_msg.StructureMismatchError, match=r"\['closure'\]|\['jit'\]"):
        eqx_msg.loads(data)
