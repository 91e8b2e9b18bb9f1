"""The registry: what a file may name, how users add to it, and what is never resolved."""

import functools
import subprocess
import sys
import textwrap
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg
from eqx_msg import _registry

from conftest import frame


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


def energy(x):
    return jnp.sum(x**2)


@jax.jit
def jitted_at_module_level(x):  # the module's `jitted_at_module_level` is the jitted function
    return x + 1


class Tools:
    @staticmethod
    def double(x):
        return 2 * x

    def method(self, x):
        return x

    @classmethod
    def make(cls, x):
        return cls.double(x)


@functools.wraps(energy)
def _wrapper_named_energy(x):
    return energy(x)


@pytest.mark.parametrize(
    "wrapper",
    [jax.jit(energy), jax.grad(energy), jax.vmap(energy), _wrapper_named_energy, jax.grad(jnp.sin)],
    ids=["jit", "grad", "vmap", "functools.wraps", "grad-of-jnp.sin"],
)
def test_a_wrapper_that_reports_its_functions_name_is_refused_not_saved_as_that_function(wrapper):
    # Stored by the wrapped function's name, it would load back as the function itself: silently
    # a different computation (eqx.nn.Lambda(jax.grad(jnp.sin)) computed jnp.sin after loading).
    with pytest.raises(eqx_msg.UnserialisableError, match="it wraps .*, which that name holds"):
        eqx_msg.dumps(Head(jnp.ones(2), wrapper))
    with pytest.raises(eqx_msg.UnserialisableError, match="the function it wraps; pass name="):
        eqx_msg.register(wrapper)
    eqx_msg.register(wrapper, name=f"tests.wrapper_{id(wrapper)}")  # a name of its own: fine
    assert eqx_msg.loads(eqx_msg.dumps(Head(jnp.ones(2), wrapper)), allow=[Head]).act is wrapper


jitted_energy = jax.jit(energy)  # bound at module level, but it reports the name `energy`


def test_the_wrapper_refusal_suggests_the_name_the_module_binds_it_to():
    with pytest.raises(eqx_msg.UnserialisableError, match=r"name='test_registry.jitted_energy'"):
        eqx_msg.dumps({"f": jitted_energy})


@pytest.mark.parametrize("annotation", [tuple[int, int], dict[str, int], list[str]])
def test_a_type_annotation_is_refused_it_would_load_as_its_origin(annotation):
    with pytest.raises(eqx_msg.UnserialisableError, match="type annotation"):
        eqx_msg.dumps({"f": functools.partial(max, annotation)})


def test_functions_the_module_binds_under_their_name_are_stored_by_it():
    for fn in (jitted_at_module_level, Tools.double, energy):
        loaded = eqx_msg.loads(eqx_msg.dumps(Head(jnp.ones(2), fn)), allow=[Head, fn])
        assert loaded.act is fn


def test_a_function_defined_again_or_outside_sys_modules_is_stored_by_its_name():
    # A notebook cell run twice, importlib.reload: the name now holds a new definition, which is
    # what loading gives, as before. Only wrappers (which carry __wrapped__) are refused.
    def energy(x):  # stands for the old definition of test_registry.energy
        return jnp.sum(x**2)

    energy.__module__, energy.__qualname__ = __name__, "energy"
    assert (
        eqx_msg.loads(eqx_msg.dumps({"f": energy}), allow=[globals()["energy"]])["f"]
        is (globals()["energy"])
    )
    detached = types.ModuleType("not_in_sys_modules")
    exec("def f(x):\n    return x\n", detached.__dict__)
    header = eqx_msg.header(eqx_msg.dumps({"f": detached.f}))
    assert header.tree.c[0].v == {"$": "ref", "v": "not_in_sys_modules.f"}


def test_a_classmethod_is_stored_by_name_and_loads_with_its_class():
    loaded = eqx_msg.loads(eqx_msg.dumps({"f": Tools.make}), allow=[Tools.make])["f"]
    assert loaded == Tools.make and loaded(3) == 6


def test_a_bound_method_is_refused_its_object_would_be_lost():
    with pytest.raises(eqx_msg.UnserialisableError, match="bound method .*Tools.method"):
        eqx_msg.dumps({"f": Tools().method})


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
                   "numpy.memmap", "numpy.fromfile", "os.system", "subprocess.run",
                   "builtins.getattr", "builtins.setattr", "builtins.__import__", "builtins.print",
                   "builtins.compile", "builtins.input", "builtins.vars"]:  # fmt: skip
        assert denied not in names, denied
    registered = {name for _, name in _registry._user_names.values()}  # what tests registered
    seeded = set(names) - registered
    assert all(n.split(".")[0] in {"jax", "jaxlib", "numpy", "ml_dtypes", "equinox", "optax",
                                   "builtins", "collections", "math"} for n in seeded)  # fmt: skip
    functions = {n for n in seeded if n.startswith("builtins.") and not isinstance(names[n], type)}
    assert functions == {"builtins.abs", "builtins.min", "builtins.max", "builtins.sum",
                         "builtins.round", "builtins.divmod", "builtins.all", "builtins.any",
                         "builtins.len"}  # fmt: skip
    # Unbounded time on arguments a file picks (a defaultdict factory of partial(factorial, 10**6)):
    for slow in ["builtins.pow", "math.factorial", "math.comb", "math.perm"]:
        assert slow not in names, slow
    assert names["math.sqrt"] is __import__("math").sqrt


def test_dtypes_and_scalar_types_in_static_fields(roundtrip):
    tree = Head(
        jnp.ones(1), (np.float32, jnp.bfloat16, np.dtype("int8"), jnp.dtype("float8_e4m3fn"))
    )
    loaded = roundtrip(tree, allow=[Head])
    assert loaded.act == tree.act


def test_library_objects_are_stored_under_their_public_names():
    import optax

    tree = {"mlp": eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0)), "f": jax.nn.gelu}
    tree["opt"] = optax.adam(1e-3).init({"w": jnp.ones(2)})
    text = repr(eqx_msg.header(eqx_msg.dumps(tree)).model_dump()["tree"])
    for public in ["equinox.nn.MLP", "equinox.nn.Linear", "jax.nn.relu", "jax.nn.gelu",
                   "optax.ScaleByAdamState", "optax.EmptyState"]:  # fmt: skip
        assert f"'{public}'" in text, public
    assert "_src" not in text and "._linear." not in text
    # A private helper with no public name keeps its module name: the MLP's default identity.
    assert "'equinox.nn._mlp._identity'" in text


def _file_naming(name: str) -> bytes:
    """A file whose whole tree is one static value: a reference to `name`."""
    header = {"format": "eqx_msg", "version": 1, "alignment": 64, "data_nbytes": 0, "leaves": [],
              "tree": {"t": "value", "v": {"$": "ref", "v": name}, "p": ""}}  # fmt: skip
    return frame(header, b"")


def test_public_and_module_names_both_resolve():
    assert eqx_msg.loads(_file_naming("jax.nn.relu")) is jax.nn.relu
    assert eqx_msg.loads(_file_naming("jax._src.nn.functions.relu")) is jax.nn.relu
    assert eqx_msg.loads(_file_naming("equinox.nn.Linear")) is eqx.nn.Linear
    assert eqx_msg.loads(_file_naming("jax.numpy.tanh")) is jnp.tanh


@pytest.mark.parametrize(
    "name",
    [
        "jax.numpy.load",
        "numpy.save",
        "numpy.fromfile",
        "jax.debug.print",
        "jax.nn._private",
        "jax.nn.__class__",
        "jax.nn.relu.__globals__",
        "jax.numpy.__builtins__",
        "os.system",
        "jax.nn.no_such_function",
        "jax.nn",
        "jax_private_fork.nn.relu",
    ],  # fmt: skip
)
def test_denied_private_and_unknown_names_do_not_resolve(name):
    with pytest.raises(eqx_msg.UnknownTypeError, match="registry"):
        eqx_msg.loads(_file_naming(name))


def test_saving_and_loading_a_model_look_names_up_without_walking_the_namespaces(tmp_path):
    """Names resolve by one lookup each: a fresh process never pays for seeding the registry."""
    path = tmp_path / "mlp.eqx"
    code = (
        "import equinox as eqx, jax, eqx_msg\n"
        "from eqx_msg import _registry\n"
        "model = eqx.nn.MLP(2, 2, 4, 1, activation=jax.nn.gelu, key=jax.random.key(0))\n"
        f"eqx_msg.save({str(path)!r}, {{'mlp': model, 'f': jax.numpy.tanh}})\n"
        f"loaded = eqx_msg.load({str(path)!r})\n"
        "assert type(loaded['mlp']) is eqx.nn.MLP and loaded['f'] is jax.numpy.tanh\n"
        "assert loaded['mlp'].activation is jax.nn.gelu\n"
        "assert loaded['mlp'].final_activation is model.final_activation  # equinox's lambda\n"
        "print('seeded' if _registry._seeded else 'not seeded')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "not seeded"


def test_one_lookup_accepts_only_what_the_full_walk_holds():
    """Every `module.attr` of every imported jax/equinox/optax/numpy module: a direct lookup finds an
    object only if the seeding walk (the reference rule) holds it under that name, or, for a public
    `namespace.attr`, if the walk would take it from that namespace (under its own name)."""
    code = """
import sys, equinox, optax, eqx_msg
from eqx_msg import _registry
_registry._seed()
walk = dict(_registry._by_name)
checked = found = 0
for module_name, module in list(sys.modules.items()):
    if module is None or module_name.partition(".")[0] not in ("jax", "equinox", "optax", "numpy"):
        continue
    for attr in list(vars(module)):
        name = f"{module_name}.{attr}"
        _registry._by_name.pop(name, None)  # no cached answer
        obj = _registry._look_up(name)
        checked += 1
        if obj is not _registry._MISSING:
            found += 1
            if module_name in _registry._SEED_NAMESPACES:  # a public name: what the walk would see
                assert obj is vars(module)[attr] and not attr.startswith("_"), name
                assert _registry._trusted(_registry.canonical_name(obj)), name
            else:
                assert walk.get(name) is obj, name
print(checked, found)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    checked, found = map(int, done.stdout.split())
    assert checked > 10_000 and found > 500, (checked, found)


def test_classes_that_compare_equal_keep_their_own_names():
    """jnp.float32 == np.float32 (and hashes alike): names are found by identity."""
    loaded = eqx_msg.loads(eqx_msg.dumps([np.float32, jnp.float32]))
    assert loaded[0] is np.float32 and loaded[1] is jnp.float32
    loaded = eqx_msg.loads(eqx_msg.dumps([np.int32, jnp.int32, jnp.int32, np.int32]))
    assert [x is y for x, y in zip(loaded, (np.int32, jnp.int32, jnp.int32, np.int32))] == [
        True
    ] * 4


@pytest.mark.parametrize(
    "name",
    ["equinox.tree_serialise_leaves", "equinox._serialisation.tree_serialise_leaves",
     "equinox.tree_deserialise_leaves", "numpy.fromregex", "numpy.seterrcall", "numpy.seterr",
     "numpy.show_config", "jax.tree_util.register_pytree_node", "jax.tree_util.register_static",
     "jax.clear_caches", "jax.config.update", "equinox.clear_caches",
     "equinox.internal._onnx.to_onnx", "equinox.internal.while_loop", "jax.sharding.set_mesh",
     "numpy.info", "math.factorial", "math.comb", "math.perm", "builtins.pow",
     "equinox.nn._spectral_norm._power_iteration"],
)  # fmt: skip
def test_functions_with_side_effects_or_unbounded_cost_do_not_resolve(name):
    with pytest.raises(eqx_msg.UnknownTypeError, match="registry"):
        eqx_msg.loads(_file_naming(name))


def load_balance_loss(x):  # a user's name that the library deny list would match
    return x


@pytest.mark.parametrize("fn", [print, exec, eval, np.save, eqx.tree_serialise_leaves, np.memmap])
def test_saving_a_function_eqx_msg_never_loads_is_refused_at_save(fn):
    with pytest.raises(eqx_msg.UnserialisableError, match=r"^\['f'\]: .* never loads it"):
        eqx_msg.dumps({"f": fn})
    # The deny list is about library namespaces: a user's function is the user's to allow.
    data = eqx_msg.dumps({"f": load_balance_loss})
    assert eqx_msg.loads(data, allow=[load_balance_loss])["f"] is load_balance_loss


def test_a_model_cannot_smuggle_a_file_writer_in(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("important data")
    evil = eqx.nn.MLP(
        2, 2, 4, 1, key=jax.random.key(0),
        activation=functools.partial(eqx.tree_serialise_leaves, str(victim)),
    )  # fmt: skip
    with pytest.raises(eqx_msg.UnserialisableError, match="never loads it"):
        eqx_msg.dumps(evil)
    with monkeypatch.context() as m:  # a hostile writer: names without the save-side checks
        m.setattr(_registry, "name_of", lambda obj, where: _registry.canonical_name(obj))
        data = eqx_msg.dumps(evil)
    with pytest.raises(eqx_msg.UnknownTypeError, match="tree_serialise_leaves"):
        eqx_msg.loads(data)
    assert victim.read_text() == "important data"


def test_registered_names_are_found_by_identity_not_by_a_reused_id():
    def first(x):
        return x

    def second(x):
        return x

    eqx_msg.register(first, name="tests.first")
    assert _registry.user_name(first) == "tests.first"
    # What id reuse after `first` is freed would look like: the same id, another object.
    _registry._user_names[id(second)] = (first, "tests.first")
    try:
        assert _registry.user_name(second) is None
        with pytest.raises(eqx_msg.UnserialisableError):
            eqx_msg.dumps({"f": second})  # a local function: no name, as before
    finally:
        del _registry._user_names[id(second)]


def test_format_md_lists_the_trusted_namespaces():
    import pathlib
    import re

    from eqx_msg import _registry

    text = (pathlib.Path(__file__).parents[1] / "docs" / "FORMAT.md").read_text()
    section = text[text.index("Those namespaces are:") : text.index("plus the builtin classes")]
    named = set(re.findall(r"`([a-z_.]+)`", section)) - {
        "jax.scipy.stats"
    }  # (the distributions' module)
    stats = {
        f"jax.scipy.stats.{d}"
        for d in re.findall(r"`([a-z_]+)`", section.split("distributions")[1])
    }
    assert set(_registry._SEED_NAMESPACES) <= named | stats
    assert {
        n
        for n in named
        if "." in n or n in ("jax", "numpy", "math", "optax", "equinox", "ml_dtypes")
    } <= set(_registry._SEED_NAMESPACES)


def test_a_class_this_process_saved_loads_in_this_process_only(tmp_path):
    code = textwrap.dedent(
        f"""
        import equinox as eqx, jax.numpy as jnp, eqx_msg

        class Mine(eqx.Module):
            w: jnp.ndarray

        def act(x):
            return x

        try:
            eqx_msg.loads(eqx_msg.dumps(Mine(jnp.ones(2))), allow=[])
        except eqx_msg.UnknownTypeError:
            raise SystemExit("refused in the process that saved it")
        assert type(eqx_msg.loads(eqx_msg.dumps(Mine(jnp.ones(2))))) is Mine
        eqx_msg.save({str(tmp_path / "m.eqx")!r}, Mine(jnp.ones(2)))
        try:  # a function is not trusted this way
            eqx_msg.loads(eqx_msg.dumps({{"f": act}}))
        except eqx_msg.UnknownTypeError:
            print("function refused")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["function", "refused"]
    # A fresh process that did not save the class does not trust it.
    fresh = subprocess.run(
        [sys.executable, "-c", f"import eqx_msg; eqx_msg.load({str(tmp_path / 'm.eqx')!r})"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert fresh.returncode != 0 and "UnknownTypeError" in fresh.stderr
