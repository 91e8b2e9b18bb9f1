"""The header and leaf plan shared by every writer and reader: bytes in, pytree out, and back."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import equinox
import jax
import jax.tree_util as jtu
import msgpack
import numpy as np
import pydantic

from . import _core, _leaves, _options, _place, _registry, _sources, _static, _tree
from ._errors import (
    ClosedError,
    HeaderError,
    KeyPathError,
    LayoutError,
    LimitError,
    StructureMismatchError,
    UnserialisableError,
    at,
    warn,
)
from ._header import FORMAT_NAME, Header, without_nil_optionals
from ._options import Load, LoadOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

WRITER = {
    "eqx_msg": _core.__version__,
    "jax": jax.__version__,
    "equinox": getattr(equinox, "__version__", "unknown"),
    "numpy": np.__version__,
    "python": ".".join(map(str, sys.version_info[:3])),
}


_ALIGN_COPY_MIN = 16 << 20  # below this, per-leaf copies cost less than a fresh buffer


class Plan(NamedTuple):
    """What a writer needs: the encoded header, and per leaf its record (with range) and source."""

    header: bytes
    records: list[dict[str, Any]]
    sources: list[Any]
    data_nbytes: int


def plan(tree: Any, metadata: Any, alignment: int) -> Plan:
    """Flatten `tree`, lay its leaves out at `alignment` and encode the header."""
    if (
        type(alignment) is not int
        or not _core.MIN_ALIGNMENT <= alignment <= _core.MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise LayoutError(
            f"alignment={alignment!r}: a power of two from {_core.MIN_ALIGNMENT} to "
            f"{_core.MAX_ALIGNMENT} is needed"
        )
    with gc_paused():
        flat = _tree.flatten(tree)
    stored = [r for r in flat.records if r["kind"] != "abstract"]
    sizes = [_core.storage_nbytes(r["dtype"], r["shape"]) for r in stored]
    offsets, data_nbytes = _core.layout(sizes, alignment)
    for record, offset, nbytes in zip(stored, offsets, sizes):
        record["offset"] = offset
        record["nbytes"] = nbytes
    header = {
        "format": FORMAT_NAME,
        "version": _core.VERSION,
        "alignment": alignment,
        "data_nbytes": data_nbytes,
        "leaves": flat.records,
        "tree": flat.tree,
        "metadata": metadata,
        "writer": WRITER,
    }
    try:
        encoded = msgpack.packb(header, use_bin_type=True, default=_metadata_scalar)
    except (TypeError, ValueError, OverflowError) as err:
        where = _metadata_problem(metadata, "metadata")
        if where is None:  # the tree's own values (a str that is not valid UTF-8)
            where = _metadata_problem({"tree": flat.tree, "leaves": flat.records}, "the header")
            raise UnserialisableError(f"{where}: cannot be stored in the header: {err}") from None
        raise UnserialisableError(
            f"{where}: metadata must be msgpack data (dict, list, str, bytes, numbers, bool, None; "
            f"real numpy and jax scalars become numbers): {err}"
        ) from None
    return Plan(encoded, flat.records, flat.sources, data_nbytes)


def _metadata_scalar(value: Any) -> Any:
    """msgpack's hook for what it cannot store: a numpy or 0-d jax scalar in metadata, as a number."""
    if (
        isinstance(value, np.generic | jax.Array)
        and isinstance(value.dtype, np.dtype)  # (not a PRNG key)
        and value.ndim == 0
    ):
        if value.dtype.kind in "biu":
            return value.item()
        if jax.dtypes.issubdtype(value.dtype, np.integer):  # int4, uint2, ...
            return int(value)
        if jax.dtypes.issubdtype(value.dtype, np.floating):  # bfloat16 and float8 too
            return float(value)
    raise TypeError(f"cannot store a {type(value).__module__}.{type(value).__qualname__}")


def _metadata_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """The key path of the first value in `metadata` that msgpack cannot store (on failure only)."""
    items: Iterable[tuple[Any, Any]]
    if depth > _core.MAX_DEPTH:
        return f"{where} (nested past the header's limit)"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        try:
            msgpack.packb(value, use_bin_type=True, default=_metadata_scalar)
            return None
        except (TypeError, ValueError, OverflowError):
            return where
    for key, item in items:
        found = (
            _metadata_problem(key, f"{where} key {key!r}", depth + 1)
            if isinstance(value, dict)
            else None
        )
        found = found or _metadata_problem(item, f"{where}[{key!r}]", depth + 1)
        if found:
            return found
    return None


def as_bytes_array(data: Any, *, writable: bool = False) -> np.ndarray:
    """A 1-D uint8 view of bytes, bytearray, memoryview, mmap or a numpy array.

    Read-only unless `writable`, which requires a writable buffer (TypeError otherwise).
    """
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as err:  # BufferError: a non-contiguous memoryview
        what = "bytearray, mmap, memoryview or numpy array"
        what = f"a writable {what}" if writable else f"bytes, {what}"
        raise TypeError(f"expected {what}, got {type(data).__name__}: {err}") from None
    if writable and not buf.flags.writeable:
        raise TypeError(f"the buffer ({type(data).__name__}) is read-only")
    buf.flags.writeable = writable
    return buf


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small acyclic objects (headers of 10k+ leaves).

    msgpack's own performance advice: allocations trigger collections that find nothing here, and
    with a large model alive each full collection walks all of it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class File:
    """A validated eqx_msg file in memory: Rust's decoded header, leaf data, and the Python decode
    on demand (`RangedFile`: one read by range from a source).

    Loading and fetching leaves use what Rust decoded while validating (leaf table, key paths, the
    encoded tree); only `raw` (metadata, shardings, the pydantic model) decodes the whole header in
    Python.
    """

    def __init__(self, buf: np.ndarray):
        """Validate the whole file in `buf` (prefix, header, every byte range; no data is read)."""
        self.buf = buf
        self._start(_core.FileHeader(buf))

    def _start(self, header: _core.FileHeader) -> None:
        self.header = header
        self.data_start = header.data_start
        self._raw: dict[str, Any] | None = None
        self._validated: Header | None = None
        self._table: _leaves.Table | None = None
        self._dtypes: list[np.dtype] | None = None

    @property
    def table(self) -> _leaves.Table:
        """The leaf table Rust decoded (first use only)."""
        if self._table is None:
            self._table = _leaves.Table(*self.header.leaf_table())
        return self._table

    @property
    def dtypes(self) -> list[np.dtype]:
        """The numpy dtype of each of the table's types (first use only)."""
        if self._dtypes is None:
            self._dtypes = _leaves.numpy_dtypes(self.table)
        return self._dtypes

    def arrays(self, indices: Sequence[int] | None = None) -> list[np.ndarray | None]:
        """Leaf data (every leaf, or those at `indices`): read-only views into `buf`.

        Packed sub-byte dtypes are unpacked into new arrays; abstract leaves give None.
        """
        _leaves.refuse_unreadable(self.table, self.dtypes, indices, self.header.paths)
        return self.header.arrays(self.buf, self.dtypes, indices)

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` (first axis) of leaf `index`'s data, which is not abstract."""
        (whole,) = self.arrays([index])
        assert whole is not None  # (the caller refuses abstract leaves)
        return whole[start:stop]

    def verify(self) -> None:
        """Check every byte against the file's checksums (Rust, all cores); `ChecksumError` if not."""
        self.header.verify(self.buf)

    @property
    def raw(self) -> dict[str, Any]:
        """The header decoded by `msgpack` (first use only)."""
        if self._raw is None:
            # From the copy Rust checked, never the live buffer (a shared map may change).
            self._raw = _unpack(self.header.header_bytes(), f"header at byte {_core.PREFIX_LEN}")
        return self._raw

    @property
    def validated(self) -> Header:
        """The pydantic `Header` of `raw`, validated once (first use only)."""
        if self._validated is None:
            self._validated = validate_header(self.raw)
        return self._validated

    @property
    def records(self) -> list[dict[str, Any]]:
        """The leaf records, as dicts."""
        return self.raw["leaves"]


class RangedFile(File):
    """A validated eqx_msg file read by range from a source that is not mapped (a file object, an
    object store): opening it reads the prefix and header only; leaf data is read when asked for.
    """

    def __init__(self, source: _sources.Source):
        """Read and validate the prefix and header of `source` (at most two reads)."""
        self.source: _sources.Source | None = source
        header, self.head = _sources.read_head(source)  # (the head may hold leaves too)
        self._start(header)

    def arrays(self, indices: Sequence[int] | None = None) -> list[np.ndarray | None]:
        """Leaf data (every leaf, or those at `indices`; None for abstract ones) in new read-only
        64-byte-aligned buffers, reading only those leaves' byte ranges.

        Packed sub-byte dtypes are unpacked into new arrays.
        """
        _leaves.refuse_unreadable(self.table, self.dtypes, indices, self.header.paths)
        wanted = range(len(self.table.which)) if indices is None else indices
        return _sources.read_arrays(
            self._source(), self.header, self.head, self.dtypes, list(wanted)
        )

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` (first axis) of leaf `index`'s data, reading only their bytes (all of
        the leaf for packed sub-byte dtypes, whose rows may share a byte)."""
        t = self.table.which[index]
        name, shape, _, _ = self.table.types[t]
        offset = self.table.offsets[index]
        if _core.dtype_bits(name) < 8 or offset is None:
            return super().rows(index, start, stop)
        _leaves.refuse_unreadable(self.table, self.dtypes, [index], self.header.paths)
        dtype = self.dtypes[t]
        row = dtype.itemsize * math.prod(shape[1:])
        buffer = _sources.read_bytes(
            self._source(), self.header, offset + start * row, offset + stop * row
        )
        rows = buffer.view(dtype).reshape((stop - start, *shape[1:]))
        rows.flags.writeable = False
        return rows

    def verify(self) -> None:
        """Check every byte against the file's checksums, streaming the data section through
        Rust's verifier in chunks; `ChecksumError` if not."""
        _sources.verify(self._source(), self.header)

    def close(self) -> None:
        """Forget the source (the caller's to close)."""
        self.source = None

    def _source(self) -> _sources.Source:
        if self.source is None:
            raise ClosedError("the reader is closed; reopen it with eqx_msg.open")
        return self.source


def decode_tree(encoded: bytes) -> Any:
    """Decode the `tree` value of a header that `_core.FileHeader` has validated."""
    return _unpack(encoded, 'header field "tree"')


def _unpack(data: Any, where: str) -> Any:
    """Decode msgpack that Rust has already checked (syntax, UTF-8, depth).

    A map key that is an array (metadata saved with tuple keys) becomes a tuple, as it was saved.
    """
    try:
        with gc_paused():
            try:
                return msgpack.unpackb(data, raw=False, strict_map_key=False)
            except TypeError:  # an unhashable key: decoded again, off the hot path
                return msgpack.unpackb(
                    data, raw=False, strict_map_key=False, object_pairs_hook=_hashable_keys
                )
    except LimitError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData) as err:
        raise HeaderError(f"{where}: {err}") from None


def _hashable_keys(pairs: Iterable[tuple[Any, Any]]) -> dict[Any, Any]:
    """A map whose array keys (lists, after msgpack) are made tuples again."""
    pairs = list(pairs)  # (msgpack 1.0 passes an iterator)
    keys = _static.spread([_as_tuple(key) for key, _ in pairs], "the header", "map keys")
    return dict(zip(keys, (value for _, value in pairs)))


def _as_tuple(key: Any) -> Any:
    return tuple(_as_tuple(k) for k in key) if isinstance(key, list) else key


def validate_header(raw: dict[str, Any]) -> Header:
    """The pydantic `Header` of a decoded header dict (its byte layout already checked by Rust)."""
    with gc_paused():  # 10k leaf models: collections would cost more than the validation
        try:
            return Header.model_validate(raw)
        except pydantic.ValidationError:
            pass  # the rare file with nil optional keys: retried without them, off the hot path
        try:
            return Header.model_validate(without_nil_optionals(raw))
        except pydantic.ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'the header'}: {e['msg']}"
                for e in err.errors()[:5]
            )
            raise HeaderError(f"the header does not match FORMAT.md: {problems}") from None


def rebuild(file: File, load: Load) -> Any:
    """Rebuild the pytree of a validated file with the options of `load`."""
    if load.verify:
        file.verify()
    allowed = _registry.allow_map(load.allow)
    paths = file.header.paths
    tree = decode_tree(file.header.tree())
    select = selector(load.filter, lambda wanted: _tree.subtree_paths(tree, wanted))
    if select is None:
        hosts = file.arrays()
    else:  # leaves not selected are not read: no view is even made
        names = paths()
        chosen = [i for i, name in enumerate(names) if select(name)]
        hosts = [None] * len(names)
        for i, host in zip(chosen, file.arrays(chosen)):
            hosts[i] = host
    shardings = None
    if load.sharding is not None:
        records = file.records
        shardings = _place.resolve_shardings(
            load.sharding, records, lambda i: _leaves.abstract_leaf(records[i])
        )
    with gc_paused():
        leaves = _leaves.build_leaves(
            file.table, hosts, load.device, shardings, paths, load.as_numpy
        )
        if load.like is None:
            return _tree.unflatten(tree, leaves, allowed)
        return match_like(load.like, tree, paths(), leaves, allowed)


def selector(
    filter: Any, subtrees: Callable[[Iterable[str]], tuple[set[str], list[str]]]
) -> Callable[[str], bool] | None:
    """A key-path predicate from `filter=`: a callable, or a pytree prefix of bools.

    A pytree (an Equinox filter spec too, though a Module may be callable) must hold bools only, at
    key paths of the file's tree (`subtrees(paths)`: which of `paths` are nodes, and the nodes on the
    way whose children are not named): else `KeyPathError`.
    """
    try:
        flat, treedef = jtu.tree_flatten_with_path(filter)
    except (ValueError, TypeError) as err:  # e.g. a dict whose keys JAX cannot sort
        raise KeyPathError(f"filter= is not a pytree JAX can flatten: {err}") from None
    if filter is None or callable(filter) and jtu.treedef_is_leaf(treedef):
        return filter
    prefixes = [(jtu.keystr(p), v) for p, v in flat]
    wrong = [
        f"{at(prefix)}: {value!r}"
        for prefix, value in prefixes
        if not isinstance(value, bool | np.bool_)
    ]
    if wrong:
        raise KeyPathError(
            f"filter= takes a callable on key paths or a pytree of bools; it holds {wrong[:3]}"
        )
    known, opaque = subtrees([prefix for prefix, _ in prefixes])
    unknown = [
        prefix
        for prefix, _ in prefixes
        if prefix not in known and not any(prefix.startswith(o) for o in opaque)
    ]
    if unknown:
        raise KeyPathError(f"filter= names key paths that are not in the file: {unknown[:5]}")

    def select(path: str) -> bool:
        chosen = False
        best = -1
        for prefix, value in prefixes:
            if (path == prefix or path.startswith(prefix) and path[len(prefix)] in "[.") and len(
                prefix
            ) > best:
                chosen, best = value, len(prefix)
        return chosen

    return select


def match_like(
    like: Any,
    tree: Any,
    paths: Sequence[str],
    leaves: Sequence[Any],
    allow: Mapping[str, Any],
) -> Any:
    """Fill `like`'s structure with the file's leaves by key path; report every mismatch at once."""
    found: dict[str, Any] = dict(zip(paths, leaves))
    values = dict(_tree.value_paths(tree))
    try:
        wanted, treedef = jtu.tree_flatten_with_path(like)
    except (ValueError, TypeError) as err:  # e.g. a dict whose keys JAX cannot sort
        raise StructureMismatchError(f"like= is not a pytree JAX can flatten: {err}") from None
    problems: list[str] = []
    out: list[Any] = []
    for key_path, reference in wanted:
        path = jtu.keystr(key_path)
        if path in found:
            leaf = found.pop(path)
            problem = _compare(reference, leaf)
            if problem:
                problems.append(f"{path}: {problem}")
        elif path in values:
            leaf = _static.decode(values.pop(path), allow, path)
        else:
            problems.append(f"{path}: in like= but not in the file")
            leaf = None
        out.append(leaf)
    problems.extend(f"{path}: in the file but not in like=" for path in [*found, *values])
    if problems:
        raise StructureMismatchError(
            f"the file does not match like= ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
    differ = _tree.static_differences(treedef, tree)
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        warn(
            f"like= and the file differ in the static fields (hyperparameters such as a norm's eps) "
            f"of {shown}; the loaded tree has like='s: load without like= for the file's"
        )
    return jtu.tree_unflatten(treedef, out)


def _compare(reference: Any, leaf: Any) -> str | None:
    """Why `leaf` does not fit where `reference` stands in like=, or None."""
    if not hasattr(reference, "shape") or not hasattr(reference, "dtype"):
        return None
    ref = (
        tuple(reference.shape),
        np.dtype(reference.dtype) if not _is_key(reference) else reference.dtype,
    )
    got = (tuple(leaf.shape), np.dtype(leaf.dtype) if not _is_key(leaf) else leaf.dtype)
    if ref != got:
        return (
            f"like= has shape {ref[0]} dtype {ref[1]}, the file has shape {got[0]} dtype {got[1]}"
        )
    return None


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def dumps(tree: Any, *, metadata: Any = None, alignment: int = 64) -> bytes:
    """Serialise a pytree to bytes in the eqx_msg format.

    **Arguments:**
    - `tree`: any pytree: Equinox Modules, dicts/lists/tuples/namedtuples, optax states, registered
      nodes; numpy or jax arrays of any dtype, typed PRNG keys, `jax.ShapeDtypeStruct`, Python scalars,
      strings and module-level functions as leaves.
    - `metadata`: any msgpack value (dicts, lists, strings, numbers) stored in the header.
    - `alignment`: byte alignment of every leaf (a power of two, at least 64).

    **Returns:** the file's bytes, e.g. `eqx_msg.loads(eqx_msg.dumps(model))`.
    """
    planned = plan(tree, metadata, alignment)
    return _core.assemble(planned.header, _host_arrays(planned))


def dumps_into(tree: Any, buffer: Any, *, metadata: Any = None, alignment: int = 64) -> int:
    """Serialise a pytree into the start of a writable buffer; returns the number of bytes written.

    Like `dumps`, without allocating: a buffer reused across checkpoints is already backed by
    memory, so this runs at memcpy speed, where a new `bytes` object first costs the kernel a page
    fault per page. A 64-byte-aligned buffer (an `mmap`, a numpy array) loads back zero-copy.

    **Arguments:**
    - `tree`, `metadata`, `alignment`: as for `dumps`.
    - `buffer`: a writable bytearray, mmap, memoryview or C-contiguous numpy array, at least
      `eqx_msg.dumps_size(tree, metadata=metadata)` bytes long; bytes past the file are untouched.

    **Returns:** the file's length `n`: `eqx_msg.loads(memoryview(buffer)[:n])` reads it back.

    **Raises:** `LengthError` if the buffer is too small (saying how big it must be); `LayoutError` if
    a leaf lies inside the buffer; `TypeError` if the buffer is read-only.
    """
    out = as_bytes_array(buffer, writable=True)
    planned = plan(tree, metadata, alignment)
    return _core.assemble_into(planned.header, _host_arrays(planned), out)


def dumps_size(tree: Any, *, metadata: Any = None, alignment: int = 64) -> int:
    """The length in bytes of `dumps(tree, metadata=metadata, alignment=alignment)`."""
    planned = plan(tree, metadata, alignment)
    return _core.total_len(planned.header)


def _host_arrays(planned: Plan) -> list[np.ndarray | None]:
    """The bytes to store for each leaf of a plan (None for abstract leaves)."""
    return [
        None if r["kind"] == "abstract" else _leaves.host_array(r, s)
        for r, s in zip(planned.records, planned.sources)
    ]


@_options.documented
def loads(data: Any, **options: Unpack[LoadOptions]) -> Any:
    """Rebuild a pytree from eqx_msg bytes (bytes, bytearray, memoryview, mmap, numpy array).

    **Arguments:**
    - `data`: the bytes of a file written by `dumps` or `save`.
    {options}

    **Returns:** the pytree. numpy leaves are read-only views into `data` (no copy); jax leaves are
    placed on the default device (on the CPU they alias `data` when it is 64-byte aligned, e.g. an
    mmap; misaligned bytes are copied once, in parallel). Leave a writable `data` unchanged while
    the tree is in use.
    """
    load = Load.of(options, "loads")
    file = File(as_bytes_array(data))
    if load.verify:  # (before the copy: the bytes given are the ones checked)
        file.verify()
        load = dataclasses.replace(load, verify=False)
    if not load.as_numpy and _worth_aligning(file):  # (numpy views need no alignment)
        copy, offset = _core.aligned_copy(file.buf, _core.MIN_ALIGNMENT)
        file.buf = copy[offset : offset + len(file.buf)]
        file.buf.flags.writeable = False
    return rebuild(file, load)


def _worth_aligning(file: File) -> bool:
    """Whether to copy misaligned data once, in parallel, so that XLA aliases every jax leaf.

    A `bytes` object's data is never 64-byte aligned, and XLA copies misaligned host buffers leaf by
    leaf, single-threaded (~3x slower than one parallel copy of the whole buffer).
    """
    data_nbytes = len(file.buf) - file.data_start
    if file.buf.ctypes.data % _core.MIN_ALIGNMENT == 0 or data_nbytes < _ALIGN_COPY_MIN:
        return False
    kinds, _, types, which = file.table
    sizes = [_core.storage_nbytes(dtype, shape) for dtype, shape, _, _ in types]
    placed = sum(sizes[w] for k, w in zip(kinds, which) if k in ("jax", "key"))
    return placed >= data_nbytes // 2
