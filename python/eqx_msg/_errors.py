"""The exceptions eqx_msg raises: one class per way things go wrong, all `ValueError`s; and `warn`."""

import os
import sys
import types
import warnings
from collections.abc import Callable

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class KeyPath:
    """A key path made only when a message names it: a child's refers to its parent's.

    Rebuilding a tree passes these down instead of strings, so no path is copied per node: a long
    dict key above many nodes would otherwise cost the square of the file's size.
    """

    __slots__ = ("parent", "key", "index")

    def __init__(self, parent: "str | KeyPath", key: "Callable[[int], str]", index: int):
        self.parent, self.key, self.index = parent, key, index

    def __str__(self) -> str:
        parts = []
        node: str | KeyPath = self
        while isinstance(node, KeyPath):
            parts.append(node.key(node.index))
            node = node.parent
        parts.append(node)
        return "".join(reversed(parts))


Where = str | KeyPath  # where a value sits in a tree, for messages


def at(path: Where) -> str:
    """A key path as messages name it: the root's is empty."""
    return str(path) or "the root"


def warn(message: str) -> None:
    """`warnings.warn`, pointing at the first caller outside eqx_msg, whatever the entry point."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 2  # warn's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


class EqxMsgError(ValueError):
    """Base class of every error eqx_msg raises."""


class FormatError(EqxMsgError):
    """The bytes are not a valid eqx_msg file (base of the damaged-file errors below)."""


class MagicError(FormatError):
    """The data does not start with the eqx_msg magic bytes: not an eqx_msg file."""


class VersionError(FormatError):
    """The file's format version is not one this reader knows."""


class LengthError(FormatError):
    """The file is shorter or longer than its prefix and header say (truncated or trailing bytes)."""


class HeaderError(FormatError):
    """The header is not valid msgpack, or a field is missing, of the wrong type or malformed."""


class LayoutError(FormatError):
    """A leaf's byte range is misaligned, out of bounds, overlapping, or of the wrong length."""


class ChecksumError(FormatError):
    """The file's bytes are not the ones written: a checksum does not match, or padding that must be
    zero is not (the file was damaged after it was written); or `verify` was asked of a file that
    has no checksums.

    `paths` lists the key paths of the damaged leaves (empty when the damage is elsewhere);
    `header` is True when the prefix or header is damaged.
    """

    paths: list[str] = []
    header: bool = False


class DTypeError(FormatError):
    """A dtype name that is not in the format's dtype table."""


class LimitError(FormatError):
    """A safety cap was exceeded: header size, nesting depth or number of dimensions."""


class UnknownTypeError(EqxMsgError):
    """The file names a class or function that is not in the registry or `allow=`."""


class UnserialisableError(EqxMsgError):
    """`dumps`/`save` met a value it cannot store (a lambda, a closure, an unsupported object)."""


class StructureMismatchError(EqxMsgError):
    """The file does not match the `like=` pytree: missing or extra key paths, other shapes or dtypes."""


class ShardingError(EqxMsgError):
    """A saved or requested sharding cannot be rebuilt on the devices at hand."""


class ClosedError(EqxMsgError):
    """A `Reader` was asked for array data after `close()` (or the end of its `with` block)."""


class KeyPathError(EqxMsgError, KeyError):
    """A key path asked of a `Reader` is not in the file."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


__all__ = [
    "ClosedError",
    "DTypeError",
    "EqxMsgError",
    "FormatError",
    "HeaderError",
    "KeyPathError",
    "LayoutError",
    "LengthError",
    "LimitError",
    "MagicError",
    "ShardingError",
    "StructureMismatchError",
    "UnknownTypeError",
    "UnserialisableError",
    "VersionError",
]
