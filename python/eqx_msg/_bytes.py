"""The bytes API: `dumps`, `dumps_into`, `dumps_size` and `loads`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core, _leaves, _options
from ._file import File, as_bytes_array
from ._options import Load, LoadOptions
from ._plan import Plan, plan
from ._rebuild import rebuild
from ._record import PLACED, Kind

if TYPE_CHECKING:
    from typing_extensions import Unpack


_ALIGN_COPY_MIN = 16 << 20  # below this, per-leaf copies cost less than a fresh buffer


def dumps(
    tree: Any, *, metadata: Any = None, alignment: int = 64, unstorable: str = "error"
) -> bytes:
    """Serialise a pytree to bytes in the eqx_msg format.

    **Arguments:**
    - `tree`: any pytree: Equinox Modules, dicts/lists/tuples/namedtuples, optax states, registered
      nodes; numpy or jax arrays of any dtype, typed PRNG keys, `jax.ShapeDtypeStruct`, Python scalars,
      strings and module-level functions as leaves.
    - `metadata`: any msgpack value (dicts, lists, strings, numbers) stored in the header, or a
      pydantic model (stored as its JSON-mode dump; `Reader.metadata_as(Model)` validates it back).
    - `alignment`: byte alignment of every leaf (a power of two, at least 64).
    - `unstorable`: what a function that cannot be stored by name (a lambda, a local closure, a
      `jax.jit` wrapper) becomes: `"error"` (the default: `UnserialisableError` naming its key
      path) or `"placeholder"`, a named placeholder that loading refuses
      (`StructureMismatchError` naming the key path) unless `like=` holds the function there.

    **Returns:** the file's bytes, e.g. `eqx_msg.loads(eqx_msg.dumps(model))`.
    """
    planned = plan(tree, metadata, alignment, unstorable)
    return _core.assemble(planned.header, _host_arrays(planned))


def dumps_into(
    tree: Any,
    buffer: Any,
    *,
    metadata: Any = None,
    alignment: int = 64,
    unstorable: str = "error",
) -> int:
    """Serialise a pytree into the start of a writable buffer; returns the number of bytes written.

    Like `dumps`, without allocating: a buffer reused across checkpoints is already backed by
    memory, so this runs at memcpy speed, where a new `bytes` object first costs the kernel a page
    fault per page. A 64-byte-aligned buffer (an `mmap`, a numpy array) loads back zero-copy.

    **Arguments:**
    - `tree`, `metadata`, `alignment`, `unstorable`: as for `dumps`.
    - `buffer`: a writable bytearray, mmap, memoryview or C-contiguous numpy array, at least
      `eqx_msg.dumps_size(tree, metadata=metadata)` bytes long; bytes past the file are untouched.

    **Returns:** the file's length `n`: `eqx_msg.loads(memoryview(buffer)[:n])` reads it back.

    **Raises:** `LengthError` if the buffer is too small (saying how big it must be); `LayoutError` if
    a leaf lies inside the buffer; `TypeError` if the buffer is read-only.
    """
    out = as_bytes_array(buffer, writable=True)
    planned = plan(tree, metadata, alignment, unstorable)
    return _core.assemble_into(planned.header, _host_arrays(planned), out)


def dumps_size(
    tree: Any, *, metadata: Any = None, alignment: int = 64, unstorable: str = "error"
) -> int:
    """The length in bytes of `dumps(tree, ...)` with the same keyword arguments."""
    planned = plan(tree, metadata, alignment, unstorable)
    return _core.total_len(planned.header)


def _host_arrays(planned: Plan) -> list[np.ndarray | None]:
    """The bytes to store for each leaf of a plan (None for abstract leaves)."""
    return [
        None if r["kind"] == Kind.ABSTRACT else _leaves.host_array(r, s)
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
    placed = sum(sizes[w] for k, w in zip(kinds, which) if k in PLACED)
    return placed >= data_nbytes // 2
