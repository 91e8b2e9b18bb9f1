"""eqx_msg.pydantic: arrays and pytrees as pydantic fields, the header's schema as their JSON."""

import json
import math
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import eqx_msg
from eqx_msg.pydantic import Array, Tree, abstract_tree, tree_view

KEY = jax.random.key(0)


def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))


class Arrays(pydantic.BaseModel):
    a: Array
    mean: Array["float32", "features"]  # noqa: F821 - a symbolic dimension, not a name
    fixed: Array[None, (None, 3)]


class Run(pydantic.BaseModel):
    model: Tree
    step: int


def _abstract(tree):
    return eqx.filter_eval_shape(lambda: tree)


def _same_abstract(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        if not isinstance(w, jax.ShapeDtypeStruct):  # a function or value field
            assert g is w or g == w
            continue
        assert isinstance(g, jax.ShapeDtypeStruct)
        assert (g.shape, g.dtype, g.weak_type) == (w.shape, w.dtype, w.weak_type)


def test_python_mode_keeps_arrays_and_json_mode_writes_the_header_record():
    a, mean, fixed = jnp.arange(6.0).reshape(2, 3), np.zeros(5, np.float32), np.ones((4, 3))
    model = Arrays(a=a, mean=mean, fixed=fixed)
    assert model.a is a and model.mean is mean and model.fixed is fixed
    assert model.model_dump()["a"] is a
    dumped = json.loads(model.model_dump_json())
    assert dumped["a"] == {"kind": "jax", "dtype": "float32", "shape": [2, 3]}
    assert dumped["mean"] == {"kind": "numpy", "dtype": "float32", "shape": [5]}
    back = Arrays.model_validate_json(model.model_dump_json())
    assert back.a == jax.ShapeDtypeStruct((2, 3), jnp.float32)
    assert back.fixed == jax.ShapeDtypeStruct((4, 3), np.float64)


def test_an_array_spec_mapping_validates_to_a_shape_dtype_struct():
    model = Arrays(
        a={"shape": [2], "dtype": "bfloat16", "weak_type": True},
        mean=jax.ShapeDtypeStruct((7,), jnp.float32),
        fixed={"shape": [0, 3], "dtype": "float8_e4m3fn"},
    )
    assert model.a == jax.ShapeDtypeStruct((2,), jnp.bfloat16, weak_type=True)
    assert model.fixed.dtype == jnp.float8_e4m3fn and model.fixed.shape == (0, 3)
    key = Arrays(a={"shape": [4, 2], "dtype": "uint32", "key_impl": "threefry2x32"}, mean=np.zeros(1, np.float32), fixed=np.zeros((1, 3)))  # fmt: skip
    assert key.a.shape == (4,) and jax.dtypes.issubdtype(key.a.dtype, jax.dtypes.prng_key)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"mean": np.zeros(3, np.int32)}, "expected dtype float32, got int32"),
        ({"fixed": np.zeros((2, 4))}, r"expected shape \('\*', 3\), got \(2, 4\)"),
        ({"fixed": np.zeros(3)}, "expected shape"),
        ({"a": "weights"}, "expected a jax or numpy array"),
        ({"a": {"shape": [2], "dtype": "float33"}}, 'field "dtype": unknown dtype "float33"'),
        ({"a": {"shape": [-2], "dtype": "float32"}}, "greater than or equal to 0"),
        ({"a": {"shape": [2**63, 2], "dtype": "float32"}}, "overflows"),
        ({"a": {"shape": [2], "dtype": "uint32", "key_impl": "nope"}}, "unknown PRNG key impl"),
    ],
)
def test_bad_arrays_and_specs_are_validation_errors_naming_the_field(fields, says):
    good = {"a": np.zeros(1), "mean": np.zeros(2, np.float32), "fixed": np.zeros((1, 3))}
    with pytest.raises(pydantic.ValidationError, match=says) as info:
        Arrays(**{**good, **fields})
    assert info.value.errors()[0]["loc"][0] == next(iter(fields))


def test_a_sharding_round_trips_through_json_onto_the_same_devices():
    mesh = _mesh()
    sharding = NamedSharding(mesh, P("x", "y"))
    sds = jax.ShapeDtypeStruct((8, 4), jnp.bfloat16, sharding=sharding)
    array = jax.device_put(jnp.ones((8, 16)), NamedSharding(mesh, P(None, ("x", "y"))))
    model = Arrays(a=sds, mean=np.zeros(1, np.float32), fixed=np.zeros((1, 3)))
    dumped = json.loads(model.model_dump_json())
    assert dumped["a"]["sharding"] == {
        "mesh_axes": ["x", "y"], "mesh_shape": [4, 2],
        "device_ids": [d.id for d in mesh.devices.flat], "spec": ["x", "y"], "memory_kind": "device",
    }  # fmt: skip
    back = Arrays.model_validate_json(model.model_dump_json())
    assert back.a.sharding == sharding and back.a.shape == (8, 4)
    plain = Arrays.model_validate_json(
        Arrays(a=array, mean=np.zeros(1, np.float32), fixed=np.zeros((1, 3))).model_dump_json()
    )
    assert plain.a.sharding.spec == P(None, ("x", "y")) and plain.a.shape == (8, 16)


@pytest.mark.parametrize(
    "edit, says",
    [
        ({"device_ids": [0, 1, 2, 3, 4, 5, 6, 99]}, r"devices \[99\] are not present"),
        ({"spec": ["x", "x"]}, 'names the mesh axis "x" more than once'),
        ({"spec": [None, "x"]}, "uneven"),
        ({"mesh_shape": [4, 3]}, "one id per mesh place"),
    ],
)
def test_a_bad_sharding_in_json_is_a_validation_error(edit, says):
    sds = jax.ShapeDtypeStruct((8, 6), jnp.float32, sharding=NamedSharding(_mesh(), P("x")))
    dumped = json.loads(Arrays(a=sds, mean=np.zeros(1, np.float32), fixed=np.zeros((1, 3))).model_dump_json())  # fmt: skip
    dumped["a"]["sharding"] |= edit
    with pytest.raises(pydantic.ValidationError, match=says):
        Arrays.model_validate_json(json.dumps(dumped))


def test_a_tree_field_round_trips_modules_optax_states_and_keys_as_abstract_trees():
    mlp = eqx.nn.MLP(2, 3, 8, 2, activation=jax.nn.gelu, key=KEY)
    state = optax.adamw(1e-3).init(eqx.filter(mlp, eqx.is_array))
    tree = {
        "mlp": mlp,
        "opt": state,
        "key": jax.random.key(1),
        "norm": eqx.nn.LayerNorm(3, eps=1e-3),
    }
    run = Run(model=tree, step=7)
    assert run.model is tree  # Python mode keeps it
    text = run.model_dump_json()
    view = json.loads(text)["model"]
    assert {"leaves", "tree"} <= set(view) and "bytes" not in text
    static = next(n for n in _nodes(view["tree"]) if n.get("cls") == "equinox.nn.LayerNorm")
    assert static["static"]["eps"] == 1e-3  # static fields by name
    back = Run.model_validate_json(text)
    assert back.step == 7
    _same_abstract(back.model, _abstract(tree))
    assert back.model["mlp"].activation is jax.nn.gelu and back.model["norm"].eps == 1e-3


def _nodes(node):
    if isinstance(node, dict):
        yield node
        for child in node.get("c", []):
            yield from _nodes(child)


def test_values_json_cannot_hold_survive_the_round_trip():
    tree = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "b": b"\xff\x00", "c": 1 + 2j}
    back = Run.model_validate_json(Run(model=tree, step=0).model_dump_json()).model
    assert back["inf"] == math.inf and back["-inf"] == -math.inf and math.isnan(back["nan"])
    assert back["b"] == b"\xff\x00" and back["c"] == 1 + 2j


def test_tree_json_naming_an_untrusted_class_or_breaking_the_tree_rules_is_refused():
    text = json.loads(Run(model=eqx.nn.Linear(2, 2, key=KEY), step=0).model_dump_json())
    hostile = json.loads(json.dumps(text))
    hostile["model"]["tree"]["cls"] = "os.system"
    with pytest.raises(pydantic.ValidationError, match="os.system") as info:
        Run.model_validate_json(json.dumps(hostile))
    assert info.value.errors()[0]["loc"] == ("model",)
    broken = json.loads(json.dumps(text))
    broken["model"]["tree"]["c"] = [0, 0]  # leaf record 0 twice, record 1 never
    with pytest.raises(pydantic.ValidationError, match="referenced a second time"):
        Run.model_validate_json(json.dumps(broken))
    unknown = json.loads(json.dumps(text))
    unknown["model"]["tree"] = {"t": "leaf"}
    with pytest.raises(pydantic.ValidationError):
        Run.model_validate_json(json.dumps(unknown))


def test_the_json_schemas_are_the_headers():
    schema = Arrays.model_json_schema()
    spec = schema["$defs"]["ArraySpec"]
    leaf = eqx_msg.Header.model_json_schema()["$defs"]["LeafSpec"]
    assert set(spec["properties"]) < set(leaf["properties"])
    for name, prop in spec["properties"].items():
        assert leaf["properties"][name] == prop, name
    assert _ref(schema["properties"]["a"]) == "#/$defs/ArraySpec"
    tree = Run.model_json_schema()
    assert _ref(tree["properties"]["model"]) == "#/$defs/TreeView"


def _ref(prop):
    """The definition a property points to (pydantic 2.7.0, the oldest supported, wraps a titled
    `$ref` in `allOf`; the newest does not)."""
    if "allOf" in prop:
        (prop,) = prop["allOf"]
    return prop["$ref"]


def test_tree_view_and_abstract_tree_are_the_field_without_pydantic():
    mlp = eqx.nn.MLP(2, 2, 4, 1, key=KEY)
    view = tree_view(mlp)
    _same_abstract(abstract_tree(view), _abstract(mlp))
    _same_abstract(abstract_tree(eqx_msg.TreeView.model_validate(view)), _abstract(mlp))


def test_importing_it_patches_nothing():
    code = (
        "import jax, equinox, pydantic\n"
        "mods = (jax, jax.Array, jax.ShapeDtypeStruct, equinox, equinox.Module, pydantic.BaseModel)\n"
        "before = [dict(vars(m)) for m in mods]\n"
        "import eqx_msg.pydantic\n"
        "after = [dict(vars(m)) for m in mods]\n"
        "changed = [(str(m), k) for m, b, a in zip(mods, before, after) for k in set(b) | set(a)\n"
        "           if b.get(k, 0) is not a.get(k, 0) and not k.startswith('__')]\n"
        "print(changed)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class Config(pydantic.BaseModel):
    width: int
    lr: float
    name: str = "mlp"

    @pydantic.field_validator("width")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("width must be positive")
        return v


def test_metadata_may_be_a_model_and_comes_back_validated(tmp_path):
    path = tmp_path / "m.eqx"
    eqx_msg.save(path, {"w": np.ones(3)}, metadata=Config(width=4, lr=1e-3))
    with eqx_msg.open(path) as reader:
        assert reader.metadata == {"width": 4, "lr": 1e-3, "name": "mlp"}
        assert reader.metadata_as(Config) == Config(width=4, lr=1e-3)
    eqx_msg.save(path, {"w": np.ones(3)}, metadata={"width": -1, "lr": 0.1})
    with eqx_msg.open(path) as reader, pytest.raises(pydantic.ValidationError, match="positive"):
        reader.metadata_as(Config)  # the model's own validators run


CHECKPOINT_MODULE = """
import datetime
from typing import ClassVar

import equinox as eqx
import jax
import pydantic

import eqx_msg
from eqx_msg.pydantic import Array, Tree


class Optim(pydantic.BaseModel):
    lr: float

    @pydantic.field_validator("lr")
    @classmethod
    def _positive(cls, v):
        if v <= 0:
            raise ValueError("lr must be positive")
        return v


class Checkpoint(pydantic.BaseModel):
    validations: ClassVar[int] = 0
    model: Tree
    step: int
    optim: Optim
    when: datetime.datetime
    mean: Array
    tags: list[str] = []

    @pydantic.model_validator(mode="after")
    def _count(self):
        type(self).validations += 1
        return self


eqx_msg.register(Optim)
eqx_msg.register(Checkpoint)


def make():
    return Checkpoint(
        model=eqx.nn.MLP(2, 2, 8, 1, key=jax.random.key(0)), step=7, optim=Optim(lr=1e-3),
        when=datetime.datetime(2026, 12, 3, 17, 0), mean=jax.numpy.arange(3.0), tags=["a", "b"],
    )
"""


def _in_fresh_process(tmp_path, code):
    (tmp_path / "ckpt_module.py").write_text(CHECKPOINT_MODULE)
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + code],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_whole_checkpoint_model_saves_and_loads_validated_in_a_fresh_process(tmp_path):
    path = tmp_path / "ckpt.eqx"
    _in_fresh_process(tmp_path, f"import ckpt_module, eqx_msg; eqx_msg.save({str(path)!r}, {{'ckpt': ckpt_module.make()}})")  # fmt: skip
    node = eqx_msg.header(path).model_dump()["tree"]["c"][0]
    assert node["t"] == "model" and node["cls"] == "ckpt_module.Checkpoint"
    assert node["static"]["step"] == 7 and node["static"]["when"] == "2026-12-03T17:00:00"
    assert node["keys"] == [".model", ".optim", ".mean"]
    out = _in_fresh_process(
        tmp_path,
        f"""
import datetime, jax.numpy as jnp, numpy as np, ckpt_module, eqx_msg
before = ckpt_module.Checkpoint.validations
loaded = eqx_msg.load({str(path)!r})["ckpt"]
assert type(loaded) is ckpt_module.Checkpoint and ckpt_module.Checkpoint.validations == before + 1
want = ckpt_module.make()
assert loaded.when == datetime.datetime(2026, 12, 3, 17, 0) and loaded.tags == ["a", "b"]
assert loaded.optim == ckpt_module.Optim(lr=1e-3) and loaded.step == 7
assert np.array_equal(loaded.mean, want.mean)
x = jnp.ones(2)
assert np.array_equal(loaded.model(x), want.model(x))
with eqx_msg.open({str(path)!r}) as reader:
    abstract = reader.abstract()["ckpt"]  # ShapeDtypeStructs: constructed, not validated
assert type(abstract) is ckpt_module.Checkpoint and abstract.mean.shape == (3,)
print("ok")
""",
    )
    assert out.strip() == "ok"
    # Without the class here: refused, or generic with its fields by name.
    with pytest.raises(eqx_msg.UnknownTypeError, match="ckpt_module.Checkpoint"):
        eqx_msg.load(path)
    with pytest.warns(UserWarning, match="ckpt_module.Checkpoint"):
        generic = eqx_msg.load(path, unknown="generic")["ckpt"]
    assert generic.cls_name == "ckpt_module.Checkpoint" and generic.step == 7
    assert generic.optim.lr == 1e-3 and generic.mean.shape == (3,)


def test_a_model_that_no_longer_validates_is_a_structure_mismatch(tmp_path):
    path = tmp_path / "ckpt.eqx"
    _in_fresh_process(tmp_path, f"import ckpt_module, eqx_msg; eqx_msg.save({str(path)!r}, ckpt_module.make().optim)")  # fmt: skip
    from conftest import reframe

    def negative(header):
        header["tree"]["static"]["lr"] = -1.0

    data = reframe(path.read_bytes(), negative)
    out = _in_fresh_process(
        tmp_path,
        f"""
import ckpt_module, eqx_msg
try:
    eqx_msg.loads({data!r})
except eqx_msg.StructureMismatchError as err:
    print(type(err).__name__, "lr must be positive" in str(err))
""",
    )
    assert out.split() == ["StructureMismatchError", "True"]


class Holder(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    thing: object


def test_a_model_field_pydantic_cannot_dump_is_unserialisable_naming_it():
    with pytest.raises(
        eqx_msg.UnserialisableError, match=r"\['h'\]\.thing: pydantic cannot dump it"
    ):
        eqx_msg.dumps({"h": Holder(thing=object())})
