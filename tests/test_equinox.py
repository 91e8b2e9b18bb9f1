"""Every eqx.nn layer, user Modules with static fields, functions and optax states round-trip."""

import dataclasses
import enum
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqx_msg

from conftest import frame, parts, reframe

KEY = jax.random.key(0)
K1, K2, K3 = jax.random.split(KEY, 3)


def _layers():
    yield "linear", eqx.nn.Linear(3, 4, key=K1)
    yield "linear_scalar_nobias", eqx.nn.Linear("scalar", "scalar", use_bias=False, key=K1)
    yield "mlp_relu", eqx.nn.MLP(3, 2, 8, 2, key=K1)
    yield (
        "mlp_tanh_sigmoid",
        eqx.nn.MLP(3, 2, 8, 1, activation=jnp.tanh, final_activation=jax.nn.sigmoid, key=K1),
    )
    yield "conv1d", eqx.nn.Conv1d(2, 3, 3, key=K1)
    yield "conv2d", eqx.nn.Conv2d(2, 3, (3, 3), stride=2, padding=1, key=K1)
    yield "conv3d", eqx.nn.Conv3d(1, 2, 2, key=K1)
    yield "convtranspose2d", eqx.nn.ConvTranspose2d(2, 3, 3, key=K1)
    yield "mha", eqx.nn.MultiheadAttention(2, 8, key=K1)
    yield "rope", eqx.nn.RotaryPositionalEmbedding(8)
    yield "layernorm", eqx.nn.LayerNorm(5)
    yield "rmsnorm", eqx.nn.RMSNorm(5)
    yield "groupnorm", eqx.nn.GroupNorm(2, 4)
    yield "embedding", eqx.nn.Embedding(10, 4, key=K1)
    yield "gru", eqx.nn.GRUCell(3, 4, key=K1)
    yield "lstm", eqx.nn.LSTMCell(3, 4, key=K1)
    yield (
        "sequential",
        eqx.nn.Sequential(
            [eqx.nn.Linear(2, 3, key=K1), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(3, 1, key=K2)]
        ),
    )
    yield "dropout", eqx.nn.Dropout(0.3)
    yield "maxpool", eqx.nn.MaxPool2d(2, 2)
    yield "avgpool", eqx.nn.AvgPool1d(3)
    yield "adaptivepool", eqx.nn.AdaptiveAvgPool2d((2, 2))
    yield "prelu", eqx.nn.PReLU()
    yield "identity", eqx.nn.Identity()
    yield "weightnorm", eqx.nn.WeightNorm(eqx.nn.Linear(4, 3, key=K1))  # a private helper function


@pytest.mark.parametrize("name,layer", list(_layers()), ids=[n for n, _ in _layers()])
def test_every_layer_round_trips(name, layer, roundtrip):
    loaded = roundtrip(layer)
    assert type(loaded) is type(layer)


def test_layers_compute_the_same_after_loading(roundtrip):
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.gelu, key=K1)
    loaded = roundtrip(mlp)
    x = jnp.arange(3.0)
    assert jnp.array_equal(mlp(x), loaded(x))
    conv = eqx.nn.Conv2d(2, 3, 3, key=K2)
    x = jax.random.normal(K3, (2, 5, 5))
    assert jnp.array_equal(conv(x), roundtrip(conv)(x))
    weightnorm = eqx.nn.WeightNorm(eqx.nn.Linear(4, 3, key=K1))
    x = jnp.arange(4.0)
    assert jnp.array_equal(weightnorm(x), roundtrip(weightnorm)(x))


def test_batchnorm_with_state(roundtrip):
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")
    loaded_model, loaded_state = roundtrip((model, state))
    x = jnp.ones((4, 3))
    out, _ = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    out2, _ = jax.vmap(loaded_model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        x, loaded_state
    )
    assert jnp.array_equal(out, out2)


class Block(eqx.Module):
    weight: jax.Array
    bias: np.ndarray | None
    shape: tuple = eqx.field(static=True)
    dtype: object = eqx.field(static=True)
    name: str = eqx.field(static=True)
    act: object = eqx.field(static=True)
    maybe: object = None

    def __check_init__(self):
        # Would fail on a rebuilt object if loading ran __init__ checks on a broken state.
        assert isinstance(self.shape, tuple)


INIT_CALLS = []


class Counted(eqx.Module):
    w: jax.Array

    def __init__(self, w):
        INIT_CALLS.append(1)
        self.w = w


def test_user_module_static_fields(roundtrip):
    block = Block(
        jnp.ones((2, 3)), None, (2, 3), jnp.bfloat16, "blk", jax.nn.relu, maybe=jnp.zeros(1)
    )
    loaded = roundtrip(block, allow=[Block])
    assert (
        type(loaded.shape) is tuple and loaded.dtype is jnp.bfloat16 and loaded.act is jax.nn.relu
    )
    assert loaded.name == "blk"


class Act(enum.Enum):
    RELU = "relu"
    GELU = "gelu"


class Mode(enum.IntEnum):
    TRAIN = 1
    EVAL = 2


class Configured(eqx.Module):
    w: jax.Array
    act: Act = eqx.field(static=True)
    mode: Mode = eqx.field(static=True)
    eps: np.float32 = eqx.field(static=True)
    scale: object = eqx.field(static=True)


@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")  # (numpy scalars too)
def test_enum_members_and_numpy_scalars_as_static_fields(roundtrip, as_another_process):
    model = Configured(jnp.ones(2), Act.GELU, Mode.EVAL, np.float32(1e-5), np.int8(3))
    data = eqx_msg.dumps(model)
    as_another_process()
    with pytest.raises(eqx_msg.UnknownTypeError, match="Act"):
        eqx_msg.loads(data, allow=[Configured])  # an Enum class resolves like any class
    loaded = roundtrip(model, allow=[Configured, Act, Mode])
    assert loaded.act is Act.GELU and loaded.mode is Mode.EVAL
    assert type(loaded.eps) is np.float32 and loaded.eps == np.float32(1e-5)
    clip = functools.partial(jnp.clip, max=np.int8(3))  # numpy scalars in a partial's arguments
    assert type(eqx_msg.loads(eqx_msg.dumps({"f": clip}))["f"].keywords["max"]) is np.int8


class Perm(enum.Flag):
    R = 1
    W = 2


def test_an_enum_value_that_is_no_single_member_is_refused():
    assert eqx_msg.loads(eqx_msg.dumps({"f": functools.partial(max, Perm.W)}), allow=[Perm])[
        "f"
    ].args == (Perm.W,)
    for value in (Perm.R | Perm.W, Perm(0)):
        with pytest.raises(eqx_msg.UnserialisableError, match="no single member"):
            eqx_msg.dumps({"f": functools.partial(max, value)})


def test_user_module_rebuilt_without_init(roundtrip):
    eqx_msg.register(Counted)
    model = Counted(jnp.ones(2))
    before = len(INIT_CALLS)
    roundtrip(model)
    assert len(INIT_CALLS) == before


def test_unregistered_user_class_needs_allow(as_another_process):
    data = eqx_msg.dumps(Block(jnp.ones(1), None, (1,), "f", "b", jax.nn.relu))
    as_another_process()
    with pytest.raises(eqx_msg.UnknownTypeError, match="Block.*allow="):
        eqx_msg.loads(data)


@pytest.mark.parametrize(
    "fn",
    [
        jax.nn.relu,
        jnp.tanh,
        jax.lax.max,
        jax.nn.gelu,
        jax.nn.softplus,
        eqx.nn.MLP(1, 1, 1, 1, key=K1).final_activation,
        jax.image.resize,
        jax.scipy.stats.norm.logpdf,
        jax.scipy.linalg.expm,
        math.tanh,
        abs,
    ],
)
def test_functions_as_static_fields_and_leaves(fn, roundtrip):
    loaded = roundtrip({"f": fn, "mlp": eqx.nn.MLP(2, 2, 2, 1, activation=fn, key=K1)})
    assert loaded["f"] is fn and loaded["mlp"].activation is fn


def test_partial_activation():
    # functools.partial objects compare by identity, so treedefs holding one never compare equal;
    # check the rebuilt partial itself.
    act = functools.partial(jax.nn.leaky_relu, negative_slope=0.2)
    loaded = eqx_msg.loads(eqx_msg.dumps(eqx.nn.MLP(2, 2, 2, 1, activation=act, key=K1)))
    assert loaded.activation.func is jax.nn.leaky_relu and loaded.activation.keywords == {
        "negative_slope": 0.2
    }


def test_lambda_is_refused_at_dumps_with_its_path():
    mlp = eqx.nn.MLP(2, 2, 2, 1, activation=lambda x: x, key=K1)
    with pytest.raises(eqx_msg.UnserialisableError, match=r"activation|MLP.*lambda|module level"):
        eqx_msg.dumps({"net": mlp})


def test_closure_is_refused_at_dumps():
    def make():
        scale = 2.0

        def scaled(x):
            return x * scale

        return scaled

    with pytest.raises(eqx_msg.UnserialisableError, match=r"\['head'\].*module level"):
        eqx_msg.dumps({"head": make()})


@pytest.mark.parametrize(
    "make",
    [
        lambda: optax.adam(1e-3),
        lambda: optax.adamw(1e-3),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
        lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
    ],
    ids=["adam", "adamw", "chain", "inject_hyperparams"],
)
def test_optax_states(make, roundtrip):
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    opt = make()
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = opt.update(grads, state, params)
    loaded = roundtrip(state)
    updates1, _ = opt.update(grads, state, params)
    updates2, _ = opt.update(grads, loaded, params)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, updates1, updates2))


@jax.tree_util.register_pytree_node_class
class Pair:
    def __init__(self, a, b, tag="pair"):
        self.a, self.b, self.tag = a, b, tag

    def tree_flatten(self):
        return (self.a, self.b), self.tag

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, tag=aux)

    def __eq__(self, other):
        return type(other) is Pair and self.tag == other.tag


@functools.partial(jax.tree_util.register_dataclass, data_fields=["x"], meta_fields=["n"])
@dataclasses.dataclass
class Data:
    x: jax.Array
    n: int


def test_registered_nodes_after_register(roundtrip, as_another_process):
    data = eqx_msg.dumps({"p": Pair(np.ones(2), jnp.zeros(1), "t"), "d": Data(jnp.ones(3), 4)})
    as_another_process()
    with pytest.raises(eqx_msg.UnknownTypeError):
        eqx_msg.loads(data)
    eqx_msg.register(Pair)
    eqx_msg.register(Data)
    loaded = roundtrip({"p": Pair(np.ones(2), jnp.zeros(1), "t"), "d": Data(jnp.ones(3), 4)})
    assert loaded["p"].tag == "t" and loaded["d"].n == 4


class Interval(tuple):
    """A tuple subclass with a pytree registration of its own (not a namedtuple)."""


jax.tree_util.register_pytree_node(
    Interval, lambda i: (tuple(i), "closed"), lambda aux, children: Interval(children)
)


def test_a_registered_tuple_subclass_round_trips(roundtrip):
    eqx_msg.register(Interval)
    loaded = roundtrip({"i": Interval((np.zeros(1), jnp.ones(2)))})
    assert type(loaded["i"]) is Interval
    assert eqx_msg.header(eqx_msg.dumps(Interval((np.zeros(1),)))).tree.t == "node"


def test_abstract_model_from_filter_eval_shape(roundtrip):
    abstract = eqx.filter_eval_shape(eqx.nn.MLP, 4, 2, 8, 2, key=K1)
    loaded = roundtrip(abstract)
    arrays = [x for x in jax.tree.leaves(loaded) if not callable(x)]
    assert arrays and all(isinstance(x, jax.ShapeDtypeStruct) for x in arrays)
    assert len(eqx_msg.dumps(abstract)) < 8192  # no array bytes stored


def test_loading_does_not_leak_modules():
    from equinox._module import _module

    tracked = (
        _module._currently_initialising._dict
    )  # equinox internals (FIELD-NOTES: the pickle leak)
    data = eqx_msg.dumps(eqx.nn.MLP(2, 2, 4, 2, key=K1))
    before = len(tracked)
    for _ in range(5):
        eqx_msg.loads(data)
    assert len(tracked) == before


def _tied_where(pair):
    return pair[1].weight


def _tied_get(pair):
    return pair[0].weight


class TiedEmbedding(eqx.Module):
    """Weight tying through eqx.nn.Shared: the Linear's weight is the Embedding's."""

    shared: eqx.nn.Shared

    def __init__(self, key):
        embedding = eqx.nn.Embedding(5, 3, key=key)
        linear = eqx.nn.Linear(3, 5, key=jax.random.fold_in(key, 1))
        self.shared = eqx.nn.Shared((embedding, linear), _tied_where, _tied_get)

    def __call__(self, token):
        embedding, linear = self.shared()
        return linear(embedding(token))


def test_shared_weights_round_trip():
    model = TiedEmbedding(K1)
    data = eqx_msg.dumps(model)
    loaded = eqx_msg.loads(data, allow=[TiedEmbedding, _tied_where, _tied_get])
    assert jax.tree.structure(loaded) == jax.tree.structure(model)
    placeholder = loaded.shared.pytree[1].weight  # a fresh SharedNode: instances hold nothing
    assert type(placeholder) is type(model.shared.pytree[1].weight)
    assert jnp.array_equal(loaded(jnp.asarray(2)), model(jnp.asarray(2)))
    embedding, linear = loaded.shared()
    assert linear.weight is embedding.weight  # tied again after loading


class _Unset:
    """A user sentinel: compared by identity, so it must come back as the same object."""


UNSET = _Unset()


class WithSentinel(eqx.Module):
    w: jax.Array
    scale: object = eqx.field(static=True, default=UNSET)


def test_a_sentinel_is_refused_unless_registered_by_name_then_comes_back_itself():
    model = WithSentinel(jnp.ones(2))
    with pytest.raises(eqx_msg.UnserialisableError, match="register"):
        eqx_msg.dumps(model)
    eqx_msg.register(UNSET, name="tests.UNSET")
    loaded = eqx_msg.loads(eqx_msg.dumps(model), allow=[WithSentinel])
    assert loaded.scale is UNSET


@pytest.mark.parametrize(
    "name", ["equinox.nn.Linear", "builtins.int", "collections.OrderedDict", "builtins.object"]
)
def test_a_file_cannot_make_an_instance_of_a_class_with_state(name):
    header = {"format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": 0, "leaves": [],
              "tree": {"t": "value", "v": {"$": "new", "cls": name}, "p": ""}}  # fmt: skip
    with pytest.raises(eqx_msg.HeaderError, match="not a placeholder class"):
        eqx_msg.loads(frame(header, b""))


def test_a_state_index_before_make_with_state_says_what_to_do():
    index = eqx.nn.StateIndex(jnp.zeros(3))  # its marker is a bare object() until make_with_state
    with pytest.raises(eqx_msg.UnserialisableError, match="make_with_state"):
        eqx_msg.dumps(index)
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")
    loaded_model, loaded_state = eqx_msg.loads(eqx_msg.dumps((model, state)))
    index, loaded_index = model.batch_state_index, loaded_model.batch_state_index
    assert isinstance(index.marker, str) and loaded_index.marker == index.marker
    assert jax.tree.structure(loaded_state.get(loaded_index)) == jax.tree.structure(
        state.get(index)
    )


class StaticAB(eqx.Module):
    w: jax.Array
    a: int = eqx.field(static=True)
    b: str = eqx.field(static=True)


class StaticBA(eqx.Module):  # the same fields, static ones declared in the other order
    w: jax.Array
    b: str = eqx.field(static=True)
    a: int = eqx.field(static=True)


class StaticAC(eqx.Module):  # b renamed to c
    w: jax.Array
    a: int = eqx.field(static=True)
    c: str = eqx.field(static=True)


def _node(data):
    return eqx_msg.header(data).tree.model_dump(exclude_none=True)


def test_static_fields_are_stored_by_name():
    node = _node(eqx_msg.dumps(eqx.nn.Linear(3, 4, use_bias=False, key=K1)))
    assert node["static"] == {"in_features": 3, "out_features": 4, "use_bias": False}
    assert "aux" not in node
    _, raw, _ = parts(eqx_msg.dumps(StaticAB(jnp.ones(2), 7, "x")))  # (msgpack, as any reader)
    assert raw["tree"]["static"] == {"a": 7, "b": "x"}  # a plain map of field names


def test_static_fields_by_name_survive_a_reordered_class_and_a_changed_one_is_named():
    data = eqx_msg.dumps(StaticAB(jnp.ones(2), 7, "x"))
    name = eqx_msg.header(data).tree.cls
    reordered = eqx_msg.loads(data, allow={name: StaticBA})
    assert type(reordered) is StaticBA and (reordered.a, reordered.b) == (7, "x")
    with pytest.raises(eqx_msg.StructureMismatchError, match=r"missing from the file: \['c'\]"):
        eqx_msg.loads(data, allow={name: StaticAC})
    # like= matches by key path instead, taking the static fields of the class as it is now.
    loaded = eqx_msg.loads(data, allow={name: StaticAC}, like=StaticAC(jnp.zeros(2), 1, "y"))
    assert loaded.c == "y" and np.array_equal(loaded.w, jnp.ones(2))


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda n: n.update(aux=[None]), 'either "aux" or "static"'),
        (lambda n: n.pop("static"), 'either "aux" or "static"'),
        (lambda n: n.update(static=[1, 2]), '"static" is a map of field names'),
        (lambda n: n.update(static={1: 2}), 'field "static" has a non-string key'),
        (lambda n: n.update(cls="builtins.object"), "Equinox Modules"),
    ],
)
def test_a_malformed_static_map_is_a_header_error(edit, match):
    def change(header):
        edit(header["tree"])

    data = reframe(eqx_msg.dumps(eqx.nn.Linear(2, 2, key=K1)), change)
    with pytest.raises(eqx_msg.HeaderError, match=match):
        eqx_msg.loads(data)
