"""Every checkpoint system behind one interface, each method doing what a user of that system must.

A method that a system cannot do raises `NotSupported("reason")`; the harness turns that into an `n/a`
cell. Flattening a pytree to `{key path: array}` and unflattening it with the original treedef is part
of the timed work for the flat formats (safetensors, flax msgpack, npz): their users have to do it.
Typed PRNG keys go to those formats as their key data, as the error they raise tells users to do.
Skeletons that a system needs to load (`eqx.tree_deserialise_leaves`, orbax) are built outside the timing.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from typing import Any, ClassVar

import jax
import jax.tree_util as jtu
import numpy as np
from _workloads import MODULES, Workload, is_key


class NotSupported(Exception):
    """This system has no way to do this operation."""


def unflatten(work: Workload, mapping: dict[str, Any]) -> Any:
    """Rebuild the workload's pytree from `{key path: leaf}` with its original treedef."""
    return jtu.tree_unflatten(work.treedef, [mapping[p] for p in work.paths])


def to_jax(tree: Any) -> Any:
    """Put every numpy leaf on the default device in one `jax.device_put` call, as a user would."""
    leaves, treedef = jtu.tree_flatten(tree)
    host = [i for i, x in enumerate(leaves) if isinstance(x, np.ndarray)]
    for i, array in zip(host, jax.device_put([leaves[i] for i in host])):
        leaves[i] = array
    return jtu.tree_unflatten(treedef, leaves)


def to_numpy(tree: Any) -> Any:
    """Every jax leaf as a numpy array (zero-copy on the CPU); typed PRNG keys stay keys."""
    return jax.tree.map(
        lambda x: x if is_key(x) or not isinstance(x, jax.Array) else np.asarray(x), tree
    )


def state_dict(work: Workload) -> dict[str, Any]:
    """`{key path: leaf}`, typed PRNG keys as their key data (what the error message tells users)."""
    return {k: jax.random.key_data(v) if is_key(v) else v for k, v in zip(work.paths, work.leaves)}


def host_flat(work: Workload) -> dict[str, np.ndarray]:
    """`{key path: numpy array}` of the workload (zero-copy for jax leaves on the CPU)."""
    return {k: np.asarray(v) for k, v in state_dict(work).items()}


def fsync_path(path: str) -> None:
    """fsync a file, or every file and directory under a checkpoint directory."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in [*files, "."]:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class System:
    """One checkpoint system; the default of every operation is `NotSupported`."""

    name: ClassVar[str]
    suffix: ClassVar[str] = ".bin"
    fsyncs: ClassVar[bool] = (
        False  # whether `save_durable` exists (else: save, then an explicit fsync)
    )
    note: ClassVar[str] = ""

    def dumps(self, work: Workload) -> bytes:
        """Serialise to bytes in memory."""
        raise NotSupported("no bytes API")

    def dumps_into(self, work: Workload) -> bytes:
        """Serialise into a buffer kept across calls (its file bytes are returned on the first)."""
        raise NotSupported("no buffer API")

    def loads(self, data: bytes, work: Workload) -> Any:
        """Rebuild the tree (original leaf kinds) from bytes."""
        raise NotSupported("no bytes API")

    def save(self, work: Workload, path: str) -> None:
        """Write the tree to `path` without fsync."""
        raise NotSupported("cannot save")

    def save_durable(self, work: Workload, path: str) -> None:
        """Write the tree to `path` and fsync it (only where `fsyncs`)."""
        raise NotSupported("no durable save")

    def load_numpy(self, path: str, work: Workload) -> Any:
        """Load the tree with numpy leaves."""
        raise NotSupported("cannot load")

    def load_jax(self, path: str, work: Workload) -> Any:
        """Load the tree with jax leaves on the default device."""
        raise NotSupported("cannot load")

    def open_one(self, path: str, work: Workload) -> Any:
        """Fetch one leaf (`work.one_key`) without loading the rest."""
        raise NotSupported("no index: only a full load")

    def open_abstract_one(self, path: str, work: Workload) -> tuple[Any, Any]:
        """(the tree with ShapeDtypeStruct leaves, one leaf), reading only that leaf's data."""
        raise NotSupported("no tree structure without a full load")

    def header_only(self, path: str, work: Workload) -> list[tuple[str, tuple[int, ...], Any]]:
        """List (key, shape, dtype or its name) of every leaf without reading array data."""
        raise NotSupported("no header: only a full load")

    def verify(self, path: str, work: Workload) -> None:
        """Check every stored byte against checksums the file holds (raising if one differs)."""
        raise NotSupported("no checksums in the file")

    def cleanup(self) -> None:
        """Undo what a load leaks, between runs and outside the timing."""


class EqxMsg(System):
    """eqx_msg itself."""

    name = "eqx_msg"
    suffix = ".eqx"
    fsyncs = True
    note = "save(path) always fsyncs (file and directory, atomic rename); the no-fsync row saves to an open file object"

    def __init__(self) -> None:
        import eqx_msg

        self.m = eqx_msg
        self.buffer: np.ndarray | None = None  # dumps_into's, kept until cleanup()
        for cls in MODULES:
            eqx_msg.register(cls)

    def dumps(self, work: Workload) -> bytes:
        return self.m.dumps(work.tree)

    def dumps_into(self, work: Workload) -> bytes | None:
        if self.buffer is None:  # the untimed warm-up: allocate, fill, return the bytes to check
            self.buffer = np.zeros(self.m.dumps_size(work.tree), np.uint8)
            n = self.m.dumps_into(work.tree, self.buffer)
            return self.buffer[:n].tobytes()
        self.m.dumps_into(work.tree, self.buffer)
        return None

    def loads(self, data: bytes, work: Workload) -> Any:
        return self.m.loads(data)

    def cleanup(self) -> None:
        self.buffer = None

    def save(self, work: Workload, path: str) -> None:
        with open(path, "wb") as f:
            self.m.save(f, work.tree)

    def save_durable(self, work: Workload, path: str) -> None:
        self.m.save(path, work.tree)

    def load_numpy(self, path: str, work: Workload) -> Any:
        return self.m.load(path, as_numpy=True)  # views of jax leaves too; keys stay keys

    def load_jax(self, path: str, work: Workload) -> Any:
        tree = self.m.load(path)
        return to_jax(tree) if work.numpy_leaves else tree

    def open_one(self, path: str, work: Workload) -> Any:
        with self.m.open(path) as reader:
            return reader[work.one_key]

    def open_abstract_one(self, path: str, work: Workload) -> tuple[Any, Any]:
        with self.m.open(path) as reader:
            return reader.abstract(), reader[work.one_key]

    def header_only(self, path: str, work: Workload) -> list[tuple[str, tuple[int, ...], Any]]:
        with self.m.open(path) as reader:
            return [(k, s.shape, s.dtype) for k, s in reader.specs().items()]  # str(dtype): 7 us

    def verify(self, path: str, work: Workload) -> None:
        self.m.verify(path)


class Safetensors(System):
    """safetensors: numpy API to save and load, flax API to load jax arrays, safe_open for one leaf."""

    name = "safetensors"
    suffix = ".safetensors"
    note = "flattened to {keystr: array} and unflattened with the treedef, inside the timing"

    def __init__(self) -> None:
        import safetensors
        import safetensors.flax
        import safetensors.numpy

        self.st = safetensors

    def dumps(self, work: Workload) -> bytes:
        return self.st.numpy.save(host_flat(work))

    def loads(self, data: bytes, work: Workload) -> Any:
        if work.numpy_leaves:
            return unflatten(work, self.st.numpy.load(data))
        return unflatten(work, self.st.flax.load(data))

    def save(self, work: Workload, path: str) -> None:
        self.st.numpy.save_file(host_flat(work), path)

    def load_numpy(self, path: str, work: Workload) -> Any:
        return unflatten(work, self.st.numpy.load_file(path))

    def load_jax(self, path: str, work: Workload) -> Any:
        return unflatten(work, self.st.flax.load_file(path))

    def open_one(self, path: str, work: Workload) -> Any:
        with self.st.safe_open(path, framework="numpy") as f:
            return f.get_tensor(work.one_key)

    def header_only(self, path: str, work: Workload) -> list[tuple[str, tuple[int, ...], Any]]:
        with self.st.safe_open(path, framework="numpy") as f:
            out = []
            for key in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                part = f.get_slice(key)
                out.append((key, tuple(part.get_shape()), part.get_dtype()))
            return out


class FlaxMsgpack(System):
    """flax.serialization: to_state_dict + msgpack_serialize; msgpack_restore + from_state_dict."""

    name = "flax msgpack"
    suffix = ".msgpack"
    note = "state dict = {keystr: leaf} (Modules are not flax state dicts); unflattened with the treedef"

    def __init__(self) -> None:
        from flax import serialization

        self.s = serialization

    def dumps(self, work: Workload) -> bytes:
        return self.s.msgpack_serialize(self.s.to_state_dict(state_dict(work)))

    def loads(self, data: bytes, work: Workload) -> Any:
        state = self.s.from_state_dict(work.flat, self.s.msgpack_restore(data))
        tree = unflatten(work, state)
        return tree if work.numpy_leaves else to_jax(tree)

    def save(self, work: Workload, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.dumps(work))

    def _read(self, path: str, work: Workload) -> Any:
        with open(path, "rb") as f:
            state = self.s.from_state_dict(work.flat, self.s.msgpack_restore(f.read()))
        return unflatten(work, state)

    def load_numpy(self, path: str, work: Workload) -> Any:
        return self._read(path, work)

    def load_jax(self, path: str, work: Workload) -> Any:
        return to_jax(self._read(path, work))


class EqxLeaves(System):
    """equinox tree_serialise_leaves / tree_deserialise_leaves (a skeleton is needed to load)."""

    name = "eqx serialise"
    suffix = ".eqx"
    note = "loading needs a skeleton (eqx.filter_eval_shape-like), built outside the timing"

    def __init__(self) -> None:
        import equinox as eqx

        self.eqx = eqx

    def dumps(self, work: Workload) -> bytes:
        buf = io.BytesIO()
        self.eqx.tree_serialise_leaves(buf, work.tree)
        return buf.getvalue()

    def _skeleton(self, work: Workload, numpy: bool) -> Any:
        return work.numpy_skeleton if numpy else work.abstract

    def loads(self, data: bytes, work: Workload) -> Any:
        return self.eqx.tree_deserialise_leaves(
            io.BytesIO(data), self._skeleton(work, work.numpy_leaves)
        )

    def save(self, work: Workload, path: str) -> None:
        self.eqx.tree_serialise_leaves(path, work.tree)

    def load_numpy(self, path: str, work: Workload) -> Any:
        return self.eqx.tree_deserialise_leaves(path, self._skeleton(work, True))

    def load_jax(self, path: str, work: Workload) -> Any:
        return self.eqx.tree_deserialise_leaves(path, self._skeleton(work, False))


class Pickle(System):
    """pickle protocol 5 of the whole tree."""

    name = "pickle"
    suffix = ".pkl"
    note = (
        "unpickling an Equinox Module goes through `Module.__new__`, which files every loaded Module in "
        "equinox's `_currently_initialising` set and never removes it: each load leaks the whole tree "
        "(+1 GiB a load of W1). The harness empties that set between runs, outside the timing, or the "
        "run runs out of memory"
    )

    def cleanup(self) -> None:
        from equinox._module import _module

        _module._currently_initialising._dict.clear()

    def dumps(self, work: Workload) -> bytes:
        return pickle.dumps(work.tree, protocol=5)

    def loads(self, data: bytes, work: Workload) -> Any:
        return pickle.loads(data)

    def save(self, work: Workload, path: str) -> None:
        with open(path, "wb") as f:
            pickle.dump(work.tree, f, protocol=5)

    def _read(self, path: str) -> Any:
        with open(path, "rb") as f:
            return pickle.load(f)

    def load_numpy(self, path: str, work: Workload) -> Any:
        tree = self._read(path)
        return tree if work.numpy_leaves else to_numpy(tree)

    def load_jax(self, path: str, work: Workload) -> Any:
        tree = self._read(path)
        return to_jax(tree) if work.numpy_leaves else tree


class Npz(System):
    """numpy savez / load of the flattened `{keystr: array}`."""

    name = "np.savez"
    suffix = ".npz"
    note = "flattened to {keystr: array} and unflattened with the treedef, inside the timing"

    def dumps(self, work: Workload) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **host_flat(work))
        return buf.getvalue()

    def _read(self, source: Any, work: Workload) -> Any:
        with np.load(source) as z:
            return unflatten(work, {k: z[k] for k in work.paths})

    def loads(self, data: bytes, work: Workload) -> Any:
        tree = self._read(io.BytesIO(data), work)
        return tree if work.numpy_leaves else to_jax(tree)

    def save(self, work: Workload, path: str) -> None:
        np.savez(path, **host_flat(work))

    def load_numpy(self, path: str, work: Workload) -> Any:
        return self._read(path, work)

    def load_jax(self, path: str, work: Workload) -> Any:
        return to_jax(self._read(path, work))

    def open_one(self, path: str, work: Workload) -> Any:
        with np.load(path) as z:
            return z[work.one_key]

    def header_only(self, path: str, work: Workload) -> list[tuple[str, tuple[int, ...], Any]]:
        fmt = np.lib.format
        out = []
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                with zf.open(name) as f:
                    version = fmt.read_magic(f)
                    read = (
                        fmt.read_array_header_1_0
                        if version == (1, 0)
                        else fmt.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                out.append((name.removesuffix(".npy"), shape, str(dtype)))
        return out


class Orbax(System):
    """orbax StandardCheckpointer, synchronous: save then wait_until_finished; restore to a target."""

    name = "orbax"
    suffix = ".orbax"
    note = "a directory; restores onto an abstract target built outside the timing; one leaf via PyTreeCheckpointer partial_restore"

    def __init__(self) -> None:
        logging.getLogger("absl").setLevel(logging.ERROR)
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.ckpt = ocp.StandardCheckpointer()
        self.pytree = ocp.PyTreeCheckpointer()

    def save(self, work: Workload, path: str) -> None:
        self.ckpt.save(os.path.abspath(path), work.tree)
        self.ckpt.wait_until_finished()

    def load_numpy(self, path: str, work: Workload) -> Any:
        return self.ckpt.restore(os.path.abspath(path), work.numpy_skeleton)

    def load_jax(self, path: str, work: Workload) -> Any:
        tree = self.ckpt.restore(os.path.abspath(path), work.abstract)
        return to_jax(tree) if work.numpy_leaves else tree

    def open_one(self, path: str, work: Workload) -> Any:
        index = work.paths.index(work.one_key)
        leaves = [self.ocp.PLACEHOLDER] * len(work.paths)
        leaves[index] = jtu.tree_leaves(work.abstract)[index]
        item = jtu.tree_unflatten(work.treedef, leaves)
        restore_args = self.ocp.checkpoint_utils.construct_restore_args(item)
        args = self.ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
        return jtu.tree_leaves(self.pytree.restore(os.path.abspath(path), args=args))[index]

    def header_only(self, path: str, work: Workload) -> list[tuple[str, tuple[int, ...], Any]]:
        tree = self.ckpt.metadata(os.path.abspath(path)).item_metadata.tree
        flat = jtu.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return [(jtu.keystr(p), tuple(m.shape), str(m.dtype)) for p, m in flat]


SYSTEMS: tuple[type[System], ...] = (
    EqxMsg,
    Safetensors,
    FlaxMsgpack,
    EqxLeaves,
    Pickle,
    Npz,
    Orbax,
)


class Unavailable(System):
    """A system that could not even be imported: every cell says why."""

    def __init__(self, name: str, reason: str):
        self.name = name  # type: ignore[misc]
        self.reason = reason

    def __getattribute__(self, attr: str) -> Any:
        if attr in (
            "dumps",
            "loads",
            "save",
            "save_durable",
            "load_numpy",
            "load_jax",
            "open_one",
            "header_only",
        ):
            raise RuntimeError(object.__getattribute__(self, "reason"))
        return object.__getattribute__(self, attr)


def make(system: str | type[System]) -> System:
    """Instantiate a system (by class or column name); an import failure gives `Unavailable`."""
    cls = next((c for c in SYSTEMS if system in (c, c.name)), None)
    if cls is None:
        raise ValueError(f"unknown system {system!r}")
    try:
        return cls()
    except Exception as err:  # a missing or broken peer becomes table cells, not a crash
        return Unavailable(cls.name, f"unavailable: {type(err).__name__}: {err}")
