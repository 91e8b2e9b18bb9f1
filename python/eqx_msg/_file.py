"""A validated eqx_msg file: its header as Rust decoded and checked it, its leaf data (from memory,
or read by range from a source), and the Python decode of the header on demand."""

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
from ._header import Header, without_nil_optionals
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

    def close(self) -> None:
        """Keep only the prefix and header (the header stays readable; the data does not)."""
        self.buf = np.array(self.buf[: self.data_start])

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
    def records(self) -> list[LeafRecord]:
        """The leaf records, as dicts."""
        return self.raw["leaves"]


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


def validate_header(raw: dict[str, Any]) -> Header:
    """The pydantic `Header` of a decoded header dict (its byte layout already checked by Rust)."""
    with _gc.paused():  # 10k leaf models: collections would cost more than the validation
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
