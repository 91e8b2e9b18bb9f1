"""eqx_msg: one aligned, memory-mappable file for any JAX/Equinox pytree.

import eqx_msg
data = eqx_msg.dumps(model, metadata={"step": 100})
n = eqx_msg.dumps_into(model, buffer)        # into a reused buffer, at memcpy speed
model = eqx_msg.loads(data)
eqx_msg.save("model.eqx", model)
model = eqx_msg.load("model.eqx")            # memory-mapped, zero-copy on the CPU
with eqx_msg.open("model.eqx") as reader:    # lazy: one leaf, a slice, a subtree
    weight = reader[".layers[0].weight"]
eqx_msg.verify("model.eqx")                  # every byte against its checksum
"""

from typing import Any

from ._bytes import dumps, dumps_into, dumps_size, loads
from ._core import VERSION as FORMAT_VERSION
from ._core import __version__
from ._errors import (
    ChecksumError,
    ClosedError,
    DTypeError,
    EqxMsgError,
    FormatError,
    HeaderError,
    KeyPathError,
    LayoutError,
    LengthError,
    LimitError,
    MagicError,
    ShardingError,
    StructureMismatchError,
    UnknownTypeError,
    UnserialisableError,
    VersionError,
)
from ._generic import GenericNode, UnknownName
from ._header import ArraySpec, Header, LeafSpec, ShardingSpec, TreeView
from ._registry import register
from .io import Reader, load, open, save, verify


def header(source: Any) -> Header:
    """The validated header of a file: anything `eqx_msg.open` takes (bytes, a path, a binary file
    object, a `read_into` source); reads the prefix and header only, imports nothing it names."""
    with open(source) as reader:
        return reader.header


__all__ = [
    "FORMAT_VERSION",
    "ArraySpec",
    "ChecksumError",
    "ClosedError",
    "DTypeError",
    "EqxMsgError",
    "FormatError",
    "GenericNode",
    "Header",
    "HeaderError",
    "KeyPathError",
    "LayoutError",
    "LeafSpec",
    "LengthError",
    "LimitError",
    "MagicError",
    "Reader",
    "ShardingError",
    "ShardingSpec",
    "StructureMismatchError",
    "TreeView",
    "UnknownName",
    "UnknownTypeError",
    "UnserialisableError",
    "VersionError",
    "__version__",
    "dumps",
    "dumps_into",
    "dumps_size",
    "header",
    "load",
    "loads",
    "open",
    "register",
    "save",
    "verify",
]
