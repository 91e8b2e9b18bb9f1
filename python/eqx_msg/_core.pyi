"""Type stubs for `eqx_msg._core`, the Rust extension (crate `rust/python`, core in `rust/core`).

Failures of the data raise the `eqx_msg._errors` class of the failure's kind (`MagicError`,
`VersionError`, `LengthError`, `HeaderError`, `LayoutError`, `DTypeError`, `LimitError`,
`ChecksumError`; the Rust core's `ErrorKind`, mapped to the classes once at import), with a
message saying what is wrong and where. Beyond those: `MemoryError` when an allocation fails,
`TypeError`/`OverflowError` for an argument of the wrong type or range, `IndexError` for a leaf index
out of range.

Copies, header decoding and file assembly run with the GIL released (unpacking sub-byte leaves does
not). So a buffer passed in must not be written to, or freed by `ndarray.resize(refcheck=False)`,
from another thread during the call.
"""

from collections.abc import Sequence
from typing import final

import numpy as np
import numpy.typing as npt

from ._record import LeafRecord

__all__ = [
    "MAGIC", "VERSION", "PREFIX_LEN", "MIN_ALIGNMENT", "MAX_ALIGNMENT", "MAX_HEADER_LEN", "MAX_DEPTH",
    "MAX_NDIM", "__version__", "dtype_names", "dtype_bits", "storage_nbytes", "layout", "FileHeader",
    "DataVerifier", "header_len",
    "aligned_copy", "total_len", "FileFrame", "crc32c", "crc32c_combine", "write_leaf",
    "write_gathered", "assemble", "assemble_into", "write_range", "pack_subbyte", "unpack_subbyte",
]  # fmt: skip

MAGIC: bytes
"""The six bytes every file starts with: `b"EQXMSG"`."""
VERSION: int
"""The format version this module reads and writes."""
PREFIX_LEN: int
"""Length of the prefix (magic, u16 version, u64 header length): 16."""
MIN_ALIGNMENT: int
"""Smallest allowed `alignment` (64)."""
MAX_ALIGNMENT: int
"""Largest allowed `alignment` (1 MiB)."""
MAX_HEADER_LEN: int
"""Longest header accepted (256 MiB)."""
MAX_DEPTH: int
"""Most nested msgpack arrays/maps in a header, the header map counting as 1 (128)."""
MAX_NDIM: int
"""Most dimensions of a leaf's shape (64)."""
__version__: str
"""Version of the Rust crate."""

def dtype_names() -> list[str]:
    """Names of all dtypes of the format (FORMAT.md section 5)."""

def dtype_bits(name: str) -> int:
    """Bits per stored element of dtype `name` (4 or 2 for packed types); DTypeError if unknown."""

def storage_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """`ceil(prod(shape) * bits / 8)`: bytes an array of `dtype` and `shape` takes in a file."""

def layout(nbytes: Sequence[int], alignment: int) -> tuple[list[int], int]:
    """Offsets of leaves of these sizes laid out in order at `alignment`, and `data_nbytes`."""

@final
class FileHeader:
    """A validated file's header, decoded once in Rust: lookups without a Python decode of it all."""

    header_len: int
    """Length of the msgpack header in bytes."""
    data_start: int
    """File offset of the data section."""

    def __new__(cls, buf: npt.NDArray[np.uint8]) -> FileHeader:
        """Validate a whole file (prefix, header, exact length, header padding) and keep its
        decoded header."""

    @staticmethod
    def from_head(head: npt.NDArray[np.uint8], file_len: int) -> FileHeader:
        """Validate the first bytes of a file of `file_len` bytes that is not in memory: `head`
        holds at least its prefix and header; `check_padding` checks the header padding after."""

    def check_padding(self, head: npt.NDArray[np.uint8]) -> None:
        """Check that the header padding is zero; `head` holds the first `data_start` bytes."""

    def verifier(self) -> DataVerifier:
        """A checker of the data section fed in order, chunk by chunk (ChecksumError if the file
        has no checksums)."""

    def ranges(self, indices: Sequence[int]) -> list[tuple[int, int] | None]:
        """The data-section byte range `(start, end)` of each leaf in `indices`; None if abstract."""

    has_checksums: bool
    """Whether the file has checksums (FORMAT.md section 9)."""

    def verify(self, buf: npt.NDArray[np.uint8]) -> None:
        """Check every byte of the file `buf` against the checksums (all cores, GIL released).

        ChecksumError naming every damaged leaf (its `paths`), a nonzero padding byte, or a file
        without checksums.
        """

    alignment: int
    """The header's `alignment`."""
    data_nbytes: int
    """The header's `data_nbytes`."""

    def find(self, path: str) -> LeafRecord | None:
        """The record (plus its `index`) of the leaf at key path `path`, or None."""

    def records(self) -> list[LeafRecord]:
        """Every leaf record as the core decoded and checked it, in record order (None where a key
        is absent; `sharding` only where present)."""

    def metadata(self) -> bytes | None:
        """The encoded msgpack of the header's `metadata`, or None where it is absent or nil."""

    def writer(self) -> bytes | None:
        """The encoded msgpack of the header's `writer` map, or None where it is absent or nil."""

    def checksums(self) -> tuple[bytes, int] | None:
        """`(leaf_crc32c, header_crc32c)` of a file with checksums, else None."""

    def leaf_table(
        self,
    ) -> tuple[
        list[str], list[int | None], list[tuple[str, list[int], bool, str | None]], list[int]
    ]:
        """`(kinds, offsets, types, which)`: per leaf its kind and data offset (None if abstract);
        the distinct `(dtype, shape, weak_type, key_impl)`; and each leaf's index among them."""

    def arrays(
        self,
        buf: npt.NDArray[np.uint8],
        dtypes: Sequence[np.dtype],
        indices: Sequence[int] | None = None,
        offset: int | None = None,
    ) -> list[np.ndarray | None]:
        """Leaf data (every leaf, or those at `indices`; None for abstract leaves) from the file `buf`.

        With `offset`, `buf` holds the data section's bytes from offset `offset` on (a ranged
        read), and every leaf asked for must lie inside it (else LayoutError).

        `dtypes[t]` is the numpy dtype of `leaf_table()`'s type `t`. Each array is a read-only view
        into `buf`, except packed sub-byte dtypes, unpacked into new read-only arrays. `LayoutError`
        if `buf` is not the file's length, `DTypeError` if a dtype does not fit its bytes.
        """

    def paths(self) -> list[str]:
        """The key path of every leaf, in file order."""

    def tree(self) -> bytes:
        """The encoded msgpack of the header's `tree` value."""

def aligned_copy(buf: npt.NDArray[np.uint8], alignment: int) -> tuple[npt.NDArray[np.uint8], int]:
    """A parallel copy of `buf` at a multiple of `alignment`: it is `array[offset:offset + len(buf)]`.

    LayoutError unless `alignment` is a power of two up to MAX_ALIGNMENT.
    """

@final
class FileFrame:
    """A file to be streamed: its validated header (checksum entries added) and geometry."""

    leaf_count: int
    """Number of leaf records."""
    data_start: int
    """File offset of the data section."""
    total_len: int
    """Length of the whole file."""

    def __new__(cls, header: bytes) -> FileFrame:
        """Validate an encoded header without checksum entries (HeaderError if it has them)."""

    def front(self, leaf_crcs: Sequence[int]) -> bytes:
        """Prefix, sealed header and zero padding (the first `data_start` bytes of the file), given
        every leaf's CRC32C in record order (0 for abstract leaves)."""

def crc32c(data: np.ndarray, crc: int = 0) -> int:
    """The CRC32C of a C-contiguous array's bytes, continuing from `crc` (GIL released)."""

def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """The CRC32C of `a + b`, given the CRC32C of each and `len(b)`."""

def write_leaf(fd: int, offset: int, data: np.ndarray) -> int:
    """Write an array's bytes at file offset `offset` of the open file `fd` (positional writes by
    several threads, GIL released); return their CRC32C. OSError as the write reports it. POSIX only."""

def write_gathered(
    fd: int, file_offset: int, base: int, length: int, offsets: Sequence[int],
    leaves: Sequence[np.ndarray],
) -> list[int]:  # fmt: skip
    """Write data-section range `[base, base + length)` (each leaf at its offset, zeros between) at
    file offset `file_offset` of `fd` in one positional write; return each leaf's CRC32C."""

@final
class DataVerifier:
    """Checks the data section of a file read in chunks against its checksums."""

    @property
    def remaining(self) -> int:
        """Bytes of the data section still to be fed."""

    def feed(self, chunk: npt.NDArray[np.uint8]) -> None:
        """Feed the next bytes of the data section; ChecksumError at once on nonzero padding."""

    def finish(self) -> None:
        """Once every byte has been fed: ChecksumError naming every damaged leaf."""

def header_len(prefix: bytes) -> int:
    """The header length a 16-byte prefix states (magic and version checked)."""

def total_len(header: bytes) -> int:
    """Length of the whole file an encoded header describes (validating the header)."""

def assemble(header: bytes, leaves: Sequence[np.ndarray | None]) -> bytes:
    """The whole file in one allocation; `leaves[i]` is C-contiguous (None for abstract leaves)."""

def write_range(
    base: int, length: int, offsets: Sequence[int], leaves: Sequence[np.ndarray]
) -> tuple[bytes, list[int]]:
    """Data-section bytes `[base, base + length)`: each leaf's bytes at its offset, zeros elsewhere;
    and each leaf's CRC32C.

    Offsets increase; leaves are C-contiguous and may not overlap or leave the range (`LayoutError`).
    """

def assemble_into(
    header: bytes, leaves: Sequence[np.ndarray | None], out: npt.NDArray[np.uint8]
) -> int:
    """Write the whole file into the start of the writable `out`; return its length.

    LengthError if `out` is too short, LayoutError if a leaf lies anywhere inside `out`.
    """

def pack_subbyte(src: npt.NDArray[np.uint8], bits: int) -> bytes:
    """Pack one-byte-per-element 4- or 2-bit values (low bits of each byte), `8 // bits` per byte."""

def unpack_subbyte(src: npt.NDArray[np.uint8], bits: int, count: int) -> bytes:
    """Unpack `count` 4- or 2-bit values into one byte each (not sign-extended)."""
