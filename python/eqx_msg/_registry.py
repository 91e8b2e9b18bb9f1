"""What may be rebuilt from a file: classes, functions and singletons, by name, never by import.

A file names the classes of its nodes and the functions in its static fields. Loading looks those names
up here and nowhere else: nothing is imported because a file names it. Trusted are the public namespaces
of jax (jax.image and jax.scipy's linalg, signal and stats among them), numpy, ml_dtypes, equinox,
optax and math (`_SEED_NAMESPACES`), minus names with side effects or unbounded cost (`_DENIED`); the
builtin classes and pure builtin functions (`_BUILTINS`); and the classes and module-level lambdas of
the equinox and optax modules already imported, with the private helpers layers keep in fields
(`_LAYER_HELPERS`). Users add their own with `register` or per call with `allow=`.

Objects are stored under their public names where they have one (`jax.nn.relu`). A name is resolved
by one lookup (`_look_up`); only a name that lookup cannot place makes `_seed` walk every trusted
namespace once (about 80 ms).
"""

from __future__ import annotations

import collections
import inspect
import re
import sys
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import UnknownTypeError, UnserialisableError, Where, at

T = TypeVar("T")

# Namespaces whose public callables and classes are trusted, walked once on first lookup.
_SEED_NAMESPACES = (
    "jax", "jax.nn", "jax.nn.initializers", "jax.numpy", "jax.numpy.linalg", "jax.numpy.fft",
    "jax.lax", "jax.random", "jax.scipy.special", "jax.tree_util", "jax.sharding", "jax.dtypes",
    "numpy", "ml_dtypes", "equinox", "equinox.nn", "optax", "optax.schedules", "optax.losses",
    "optax.contrib", "jax.image", "jax.scipy.linalg", "jax.scipy.signal", "jax.scipy.stats.norm",
    "jax.scipy.stats.multivariate_normal", "jax.scipy.stats.t", "jax.scipy.stats.beta",
    "jax.scipy.stats.gamma", "jax.scipy.stats.logistic", "jax.scipy.stats.laplace",
    "jax.scipy.stats.cauchy", "jax.scipy.stats.expon", "jax.scipy.stats.uniform",
    "jax.scipy.stats.poisson", "jax.scipy.stats.bernoulli", "jax.scipy.stats.truncnorm", "math",
)  # fmt: skip
# Packages whose already-imported modules are also walked, private ones included (optax states,
# equinox's private helpers such as the MLP's default identity).
_SEED_PACKAGES = ("equinox", "optax")
# Names that touch files, processes, the interpreter or global state (pytree registrations, JAX and
# numpy configuration, caches, meshes) are never resolved, so a file cannot place them in a model's
# static fields (where `functools.partial` could aim them at a path). Equinox's internal tools too.
_DENIED = re.compile(
    r"load|save|file|txt|memmap|pickle|exec|eval|compile|import|open|system|callback|print|debug"
    r"|spawn|popen|remove|unlink|write|dump|getattr|setattr|globals|locals|breakpoint|input|exit"
    r"|seriali[sz]|regex|register|config|seterr|setbufsize|clear_cache|show_|hooks_dir"
    r"|copy_to_host|onnx|str2jax|set_mesh|use_abstract_mesh|disable_jit|progress|tqdm"
    r"|^equinox\.internal\.|(^|\.)info$"  # numpy.info imports the module a string names
    r"|^math\.(factorial|comb|perm)$"  # time beyond bound on large arguments (a file chooses them)
    # numpy's in-place writers (a model would overwrite its caller's input), bmat (evaluates names in
    # the caller's frame), functions that take functions, and lax's host I/O.
    r"|(^|\.)(copyto|put|place|putmask|fill_diagonal|put_along_axis|bmat|vectorize|frompyfunc"
    r"|piecewise|apply_along_axis|apply_over_axes|fromfunction|platform_dependent|infeed|outfeed"
    r"|test|add_docstring|add_newdoc)$",
    re.IGNORECASE,
)
# Builtin classes, and builtin functions without side effects: in the registry from the start.
_BUILTINS = (
    int, float, complex, bool, str, bytes, list, tuple, dict, set, frozenset, slice, type(None), object,
    collections.OrderedDict, collections.defaultdict, collections.deque,
    abs, min, max, sum, round, divmod, all, any, len,
)  # fmt: skip

# Plain functions (not classes) may come only from these namespaces of array math: activations,
# initializers, elementwise and linear-algebra functions, random draws, schedules and losses. The
# namespaces of transforms, tree utilities and tools (jax, jax.tree_util, equinox, optax's own
# top level: jit, grad, tree_map, filter_jit, error_if, chain, ...) give classes only, apart from
# equinox's array predicates, which filter specs hold.
_FUNCTION_NAMESPACES = frozenset(
    n for n in _SEED_NAMESPACES
    if n.startswith(("jax.nn", "jax.numpy", "jax.lax", "jax.random", "jax.scipy", "jax.image"))
    or n in ("numpy", "ml_dtypes", "math", "optax.schedules", "optax.losses")
)  # fmt: skip
_PREDICATES = frozenset(
    f"equinox.{n}"
    for n in ("is_array", "is_array_like", "is_inexact_array", "is_inexact_array_like")
)
# Even there, a function that takes a function (a transform, `vectorize`, `piecewise`, `lax.scan`)
# is refused: with `partial`, a file could compose trusted pieces into behaviour nobody trusted. Its
# parameters say so: these names, these endings, or a `Callable` annotation. So is a function whose
# parameters cannot be read (apart from ufuncs and the C functions of `math` and `numpy`).
_CALLABLE_PARAMETERS = frozenset({
    "f", "fn", "fun", "func", "function", "funcs", "fns", "funs", "callable", "callback", "pyfunc",
    "func1d", "funclist", "branches", "computation", "comparator", "reducer", "decomposition",
    "matvec", "solve", "transpose_solve", "tangent_solve", "jvp", "vjp", "fwd", "bwd", "is_leaf",
    "filter_spec", "replace_fn", "schedule", "schedules", "inner", "on_error", "compiler_options",
    "ldict", "gdict", "default_device", "file", "fname", "path",
})  # fmt: skip
_CALLABLE_SUFFIXES = ("_fn", "_fun", "_func", "_function", "_factory", "_callback", "_fns")

_PUBLIC_PACKAGES = frozenset(namespace.partition(".")[0] for namespace in _SEED_NAMESPACES)

_by_name: dict[str, Any] = {}  # name -> object: what a file may name
# id(object) -> (object, name), for `register(..., name=)` and singletons. The object is kept (and
# compared by identity) so that an id reused after a re-registered object is freed never matches.
_user_names: dict[int, tuple[Any, str]] = {}
_public_names: dict[int, tuple[Any, str | None]] = {}  # id -> (object, its public name or None)
# Classes this process saved under their own `module.qualname` without registering them: trusted
# for loading in this process (the process's own code handed them to `save`; docs/SECURITY.md).
_saved_here: dict[str, type] = {}
_seeded = False


def canonical_name(obj: Any) -> str | None:
    """`module.qualname` as the object reports it, or None when it has no stable name."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return f"{module}.{qualname}"


def register(obj: T, name: str | None = None) -> T:
    """Allow `obj` (a class, function or singleton) to be rebuilt from files; usable as a decorator."""
    if not name:
        name = canonical_name(obj)
        if name is None:
            raise UnserialisableError(
                f"cannot register {obj!r}: it has no module-level name; pass name='...'"
            )
        wrapped = _wrapped_under(obj, name)
        if wrapped is not _MISSING:
            raise UnserialisableError(
                f"cannot register {obj!r} as {name!r}: that name holds {wrapped!r:.60}, the "
                "function it wraps; pass name='...'"
            )
    _by_name[name] = obj
    _user_names[id(obj)] = (obj, name)
    return obj


def name_of(obj: Any, where: str) -> str:
    """The name under which `obj` is stored; `UnserialisableError` (naming `where`) if it has none."""
    if typing.get_origin(obj) is not None:  # `tuple[int, int]` reports the name of `tuple`
        raise UnserialisableError(
            f"{at(where)}: cannot store the type annotation {obj!r:.80}: it would load as "
            f"{typing.get_origin(obj)!r}. Store a class, or the annotation's text"
        )
    name = _stored_name(obj)
    if name is None:
        raise UnserialisableError(
            f"{at(where)}: cannot store {obj!r}: a lambda, or a function or class defined "
            "inside another function, has no name to look up when loading. Define it at module level "
            "(and pass it to eqx_msg.register, or to allow= when loading)."
        )
    if user_name(obj) is not None or public_name(obj) == name:
        return name  # a name that holds `obj`, by registration or by lookup
    bound_to_an_instance = inspect.ismethod(obj) and not isinstance(obj.__self__, type)
    if bound_to_an_instance:  # (a classmethod is bound to its class, which has a name)
        raise UnserialisableError(
            f"{at(where)}: cannot store the bound method {name}: a function is stored by "
            "name, and its object would be lost. Store the object itself (a Module is a pytree), "
            "or a module-level function."
        )
    wrapped = _wrapped_under(obj, name)
    if wrapped is not _MISSING:
        bound = _names_holding(obj.__module__, obj)  # (`_wrapped_under` checked __module__)
        raise UnserialisableError(
            f"{at(where)}: cannot store {obj!r:.80} as {name!r}: it wraps {wrapped!r:.60}, "
            "which that name holds, and would load as it (jax.jit, jax.grad, jax.vmap and "
            "functools.wraps wrappers report the name of the function they wrap). Store the "
            "function itself, or register the wrapper under a name of its own: "
            f"eqx_msg.register(obj, name={(bound or ['...'])[0]!r})."
        )
    if name.startswith(_TRUSTED) and _held(name) is not obj:  # a library object never loaded
        raise UnserialisableError(
            f"{at(where)}: cannot store {name}: eqx_msg never loads it (a file may name classes and "
            "leaf-like functions only: nothing that takes a function, an options dict or a path, "
            "or touches files, processes or global state; docs/SECURITY.md); register it under a "
            "name of your own if you trust it"
        )
    if isinstance(obj, type) and name == canonical_name(obj):
        _saved_here[name] = obj  # (the latest class of that name: a notebook may redefine it)
    return name


def _stored_name(obj: Any) -> str | None:
    """The name `register` gave `obj`, else its public name, else `module.qualname` (or None)."""
    return user_name(obj) or public_name(obj) or canonical_name(obj) or _lambda_name(obj)


def _wrapped_under(obj: Any, name: str) -> Any:
    """The function `obj` wraps (through `__wrapped__`) if `name`, the name it reports, holds that
    function rather than `obj`; else `_MISSING`.

    Classes are not checked: a class defined again (a notebook cell run twice) keeps its name, and
    loading checks a node's `keys` against the class it finds. Nor is a function defined again:
    only a wrapper stands to load as a different computation.
    """
    inner = None if isinstance(obj, type) else getattr(obj, "__wrapped__", None)
    if inner is None:
        return _MISSING
    module_name = getattr(obj, "__module__", None)
    if not isinstance(module_name, str) or not name.startswith(f"{module_name}."):
        return _MISSING
    module = sys.modules.get(module_name)
    if module is None:
        return _MISSING
    first, *rest = name[len(module_name) + 1 :].split(".")
    found = vars(module).get(first, _MISSING)
    # Class attributes as the class gives them (staticmethods, Equinox's method wrappers).
    for attr in rest:
        found = getattr(found, attr, _MISSING)
    for _ in range(64):  # a chain of wrappers, as deep as anyone stacks decorators
        if inner is found:
            return found
        inner = getattr(inner, "__wrapped__", None)
        if inner is None:
            break
    return _MISSING


def _is_lambda(obj: Any) -> bool:
    return getattr(obj, "__name__", None) == "<lambda>"


def _lambda_name(obj: Any) -> str | None:
    """`module.attr` of a lambda that equinox or optax binds at module level (the MLP's `_identity`)."""
    module_name = getattr(obj, "__module__", None)
    if not _is_lambda(obj) or not isinstance(module_name, str):
        return None
    if module_name.partition(".")[0] not in _SEED_PACKAGES:
        return None
    return next((name for name in _names_holding(module_name, obj) if _trusted(name)), None)


def _names_holding(module_name: str, obj: Any) -> list[str]:
    """`module.attr` for each module-level name of an imported module that holds `obj`."""
    module = sys.modules.get(module_name)
    members = vars(module).items() if module is not None else ()
    return [f"{module_name}.{attr}" for attr, value in members if value is obj]


def public_name(obj: Any) -> str | None:
    """`namespace.name` if a seeded public namespace exports `obj` under its own name, else None.

    `jax.nn.relu` rather than `jax._src.nn.functions.relu`: a file keeps loading after a library moves
    its private modules around. Only namespaces already imported are searched.
    """
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or module.partition(".")[0] not in _PUBLIC_PACKAGES:
        return None  # (a user's class: the common case, decided without a lookup)
    cached = _public_names.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    short = getattr(obj, "__name__", None)
    found = None
    if isinstance(short, str):
        for namespace in _SEED_NAMESPACES:
            if _exported(namespace, short, may_import=False) is obj:
                found = f"{namespace}.{short}"
                break
    _public_names[id(obj)] = (obj, found)  # by identity: jnp.float32 == np.float32, hash alike
    return found


def _exported(namespace: str, attr: str, may_import: bool) -> Any:
    """What the seeded public `namespace` exports as `attr` if the registry may hold it, else `_MISSING`."""
    if attr.startswith("_") or not attr.isidentifier() or _DENIED.search(attr):
        return _MISSING
    module = sys.modules.get(namespace)
    if module is None and may_import:
        try:  # a name from the fixed seed list only, never one from a file
            module = __import__(namespace, fromlist=["_"])
        except ImportError:
            return _MISSING
    obj = _MISSING if module is None else vars(module).get(attr, _MISSING)
    if obj is _MISSING or not _admissible(namespace, obj):
        return _MISSING
    return obj


def _admissible(namespace: str, obj: Any) -> bool:
    """Whether a seeded `namespace` may give the registry `obj`: a class, or a leaf-like function of
    a namespace of array math (`_FUNCTION_NAMESPACES`), with a trusted, undenied name."""
    if not (isinstance(obj, type) or callable(obj)) or not _trusted(canonical_name(obj)):
        return False
    if isinstance(obj, type):
        return True
    if namespace not in _FUNCTION_NAMESPACES and f"{namespace}.{obj.__name__}" not in _PREDICATES:
        return False
    return not _takes_functions(obj)


def _takes_functions(func: Any) -> bool:
    """Whether `func`'s parameters (by name, ending or annotation) may take a function, or cannot be
    read at all: see `_CALLABLE_PARAMETERS`."""
    if isinstance(func, np.ufunc | jnp.ufunc):
        return False  # elementwise: arrays in, arrays out (`out=` takes arrays)
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # a builtin without a text signature (numpy < 2.4: np.zeros)
        # C functions of math and numpy take no Python callables, but for frompyfunc (denied).
        return getattr(func, "__module__", None) not in ("math", "numpy")
    if parameters and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return any(p.kind is p.VAR_KEYWORD for p in parameters)  # (**kwargs): nothing to go by
    return any(
        p.name.lower() in _CALLABLE_PARAMETERS
        or p.name.lower().endswith(_CALLABLE_SUFFIXES)
        or "Callable" in str(p.annotation)
        for p in parameters
    )


def _trusted(name: str | None) -> bool:
    """Whether a name lies in a trusted package and names nothing that touches files or processes."""
    return name is not None and name.startswith(_TRUSTED) and not _DENIED.search(name)


def trusted(name: str, allow: Mapping[str, Any]) -> Any:
    """The object `allow` or the registry holds under `name`, else `MISSING` (`_registry.MISSING`)."""
    found = allow.get(name, _MISSING)
    return _held(name) if found is _MISSING else found


def resolve(name: str, allow: Mapping[str, Any], where: Where) -> Any:
    """The object registered (or allowed) under `name`; `UnknownTypeError` if there is none."""
    found = allow.get(name, _MISSING)
    if found is _MISSING:
        found = _held(name)
    if found is _MISSING:
        raise UnknownTypeError(
            f"{at(where)}: the file names {name!r}, which is not in eqx_msg's registry. "
            "Nothing is imported from a file; if you trust it, pass the object in allow=[...] or call "
            "eqx_msg.register(obj) (with name=... if it was registered under another name)."
        )
    return found


def _held(name: str) -> Any:
    """What the registry holds under `name` (registered, seeded or found by `_look_up`), else
    `_MISSING`; walks every trusted namespace once (`_seed`) for a name no lookup can place."""
    found = _by_name.get(name, _MISSING)
    if found is _MISSING:
        found = _saved_here.get(name, _MISSING)
    if found is _MISSING:
        found = _look_up(name)
    if found is _MISSING and not _seeded:  # a rare name (alias, module not imported): walk all
        _seed()
        found = _by_name.get(name, _MISSING)
    return found


def _look_up(name: str) -> Any:
    """Resolve `name` by one lookup, accepting only what `_seed`'s walk would hold; else `_MISSING`.

    Public names (`jax.nn.relu`) and names of already-imported modules (`jax._src.nn.functions.relu`,
    `equinox.nn._mlp._identity`) are found here, so a load rarely pays for walking every namespace.
    """
    module_name, _, attr = name.rpartition(".")
    if module_name in _SEED_NAMESPACES:
        found = _exported(module_name, attr, may_import=True)
        if found is not _MISSING:
            _by_name[name] = found
            return found
    module = sys.modules.get(module_name)  # never imported here: the name comes from a file
    if module is None or not _trusted(name) or not attr.isidentifier() or attr.startswith("__"):
        return _MISSING
    obj = vars(module).get(attr, _MISSING)
    if obj is _MISSING or not (isinstance(obj, type) or callable(obj)):
        return _MISSING
    if canonical_name(obj) == name:  # defined in that module
        held = _private_ok(module_name, obj) or public_name(obj) is not None
    else:
        held = _lambda_name(obj) == name
    if not held:
        return _MISSING
    _by_name[name] = obj
    return obj


def allow_map(allow: Iterable[Any] | Mapping[str, Any]) -> Mapping[str, Any]:
    """Turn `allow=` (objects, or a mapping of names to objects) into a name -> object mapping."""
    if isinstance(allow, Mapping):
        return allow
    out: dict[str, Any] = {}
    for obj in allow:
        name = _stored_name(obj)
        if name is None:
            raise UnserialisableError(f"allow=: {obj!r} has no module-level name; use a dict")
        out[name] = obj
    return out


def _seed() -> None:
    """Fill the registry with the trusted namespaces (once, on first need)."""
    global _seeded
    if _seeded:
        return
    _seeded = True
    for namespace in _SEED_NAMESPACES:
        module = sys.modules.get(namespace)
        if module is None:
            try:  # the fixed seed list only, never a name from a file
                module = __import__(namespace, fromlist=["_"])
            except ImportError:
                continue
        _add_module(module, defined_here_only=False)
    for modname, module in list(sys.modules.items()):
        if module is not None and modname.split(".")[0] in _SEED_PACKAGES:
            _add_module(module, defined_here_only=True)


def _add_module(module: Any, defined_here_only: bool) -> None:
    for attr, obj in list(vars(module).items()):
        if attr.startswith("__") or not (isinstance(obj, type) or callable(obj)):
            continue
        name = canonical_name(obj)
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if name is None and defined_here and _is_lambda(obj):
            name = f"{module.__name__}.{attr}"  # e.g. the MLP's default `_identity = lambda x: x`
            _user_names.setdefault(id(obj), (obj, name))
        if name is None or not _trusted(name):
            continue
        if defined_here_only and not (defined_here and _private_ok(module.__name__, obj)):
            continue
        if not defined_here_only and not _admissible(module.__name__, obj):
            continue
        _by_name.setdefault(name, obj)


def _private_ok(module_name: str, obj: Any) -> bool:
    """Whether `obj`, defined in a module of equinox or optax, is trusted though not exported.

    Classes (Modules, optax states) and module-level lambdas (the MLP's `_identity`) are; plain
    functions only those that layers keep in their fields (`_LAYER_HELPERS`). Other plain functions
    are reachable only through a public namespace.
    """
    if module_name.partition(".")[0] not in _SEED_PACKAGES:
        return False
    return isinstance(obj, type) or _is_lambda(obj) or canonical_name(obj) in _LAYER_HELPERS


# Private functions that Equinox layers store in their fields (pure), so a saved layer loads.
_LAYER_HELPERS = frozenset({"equinox.nn._weight_norm._norm_except_axis"})


def _add_builtins() -> None:
    """Builtin classes and pure builtin functions, under `builtins.name` (or `collections.name`)."""
    for obj in _BUILTINS:
        _by_name.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)


def _add_singletons() -> None:
    """Objects compared by identity inside Equinox's flatten data, stored by name."""
    treedef = jax.tree_util.tree_structure(eqx.nn.Identity())
    missing = treedef.node_data()[1][0]  # type: ignore[attr-defined]  # (not in jaxlib's stubs)
    name = _EQX_MISSING
    _by_name.setdefault(name, missing)
    _user_names.setdefault(id(missing), (missing, name))


def sets_wrapper_fields(cls: Any, aux: Any) -> bool:
    """Whether a Module's flatten data `aux` sets its wrapper fields (`aux[0]` not equinox's MISSING)."""
    return (
        isinstance(cls, type)
        and issubclass(cls, eqx.Module)
        and isinstance(aux, tuple)
        and bool(aux)
        and aux[0] is not _by_name[_EQX_MISSING]
    )


def takes_functions_by_design(func: Any) -> bool:
    """Whether `func` is a helper that Equinox layers bind functions to (`_LAYER_HELPERS`: weight
    norm's `partial(_norm_except_axis, norm=partial(jnp.linalg.norm, ...))`)."""
    name = canonical_name(func)
    return name in _LAYER_HELPERS and _look_up(name) is func


def is_builtin_class(obj: Any) -> bool:
    """Whether `obj` is one of the builtin classes of `_BUILTINS` (cheap to call with no arguments)."""
    return isinstance(obj, type) and any(obj is b for b in _BUILTINS)


_EQX_MISSING = "equinox._module._flatten.MISSING"


def user_name(obj: Any) -> str | None:
    """The name `obj` was registered under (or a singleton's), else None: by identity."""
    entry = _user_names.get(id(obj))
    return entry[1] if entry is not None and entry[0] is obj else None


_TRUSTED = tuple(
    f"{p}." for p in ("jax", "jaxlib", "numpy", "ml_dtypes", "equinox", "optax", "math")
) + (
    "builtins.",
    "collections.",
)
_MISSING = object()
MISSING = _MISSING  # what `trusted` gives for a name it does not hold

__all__ = ["allow_map", "canonical_name", "name_of", "register", "resolve", "user_name"]

_add_builtins()
_add_singletons()
