"""A validated eqx_msg file: its header as Rust decoded and checked it, its leaf data (from memory,
or read by range from a source), and the header's Python views (records, metadata, the pydantic
model) built from what Rust decoded, on demand."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import numpy as np
import pydantic

from . import _core, _gc, _leaves, _static
from ._errors import (
    HeaderError,
    LimitError,
)
from ._header import Header
from ._record import LeafRecord


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


class File:
    """A validated eqx_msg file in memory: Rust's decoded header, leaf data, and the Python decode
    on demand (`io._sources.RangedFile`: one read by range from a source).

    Everything Python sees of the header comes from what Rust decoded while validating: the leaf
    table, key paths and leaf records (shardings included), and the encoded tree, metadata and
    writer values, which msgpack decodes here into Python values (each on first use). The header
    is never decoded whole a second time, and nothing Rust checked is checked again.
    """

    def __init__(self, buf: np.ndarray):
        """Validate the whole file in `buf` (prefix, header, every byte range; no data is read)."""
        self.buf = buf
        self._start(_core.FileHeader(buf))

    def _start(self, header: _core.FileHeader) -> None:
        self.header = header
        self.data_start = header.data_start
        self._records: list[LeafRecord] | None = None
        self._metadata: tuple[Any] | None = None
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

    def close(self) -> None:
        """Keep only the prefix and header (the header stays readable; the data does not)."""
        self.buf = np.array(self.buf[: self.data_start])

    @property
    def records(self) -> list[LeafRecord]:
        """The leaf records as Rust decoded them, as dicts (first use only)."""
        if self._records is None:
            self._records = self.header.records()
        return self._records

    @property
    def metadata(self) -> Any:
        """The user's metadata, decoded (first use only); None where the file has none."""
        if self._metadata is None:
            encoded = self.header.metadata()
            self._metadata = (
                None if encoded is None else _unpack(encoded, 'header field "metadata"'),
            )
        return self._metadata[0]

    @property
    def validated(self) -> Header:
        """The pydantic `Header`, built once from what Rust decoded (first use only)."""
        if self._validated is None:
            self._validated = header_model(self)
        return self._validated


def decode_tree(encoded: bytes) -> Any:
    """Decode the `tree` value of a header that `_core.FileHeader` has validated."""
    return _unpack(encoded, 'header field "tree"')


def _unpack(data: Any, where: str) -> Any:
    """Decode msgpack that Rust has already checked (syntax, UTF-8, depth).

    A map key that is an array (metadata saved with tuple keys) becomes a tuple, as it was saved.
    """
    try:
        with _gc.paused():
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


def header_model(file: File) -> Header:
    """The pydantic `Header` of a file, from the fields Rust decoded and checked.

    Rust has checked every rule these models type (FORMAT.md sections 2-4 and 7), so validation
    only builds the models; keys this reader does not know are not in them (Rust ignores them).
    """
    header = file.header
    writer = header.writer()
    checksums = header.checksums()
    fields = {
        "format": "eqx_msg",
        "version": _core.VERSION,
        "alignment": header.alignment,
        "data_nbytes": header.data_nbytes,
        "leaves": file.records,
        "tree": decode_tree(header.tree()),
        "metadata": file.metadata,
        "writer": {} if writer is None else _unpack(writer, 'header field "writer"'),
    }
    if checksums is not None:
        fields["leaf_crc32c"], fields["header_crc32c"] = checksums
    with _gc.paused():  # 10k leaf models: collections would cost more than the validation
        try:
            return Header.model_validate(fields)
        except pydantic.ValidationError as err:  # pragma: no cover - a model disagreeing with Rust
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'the header'}: {e['msg']}"
                for e in err.errors()[:5]
            )
            raise HeaderError(
                f"the header models disagree with the core ({problems}): an eqx_msg bug, please "
                "report it with the file"
            ) from None
