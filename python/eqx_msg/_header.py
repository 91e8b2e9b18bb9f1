"""The header as pydantic models: the documented schema of FORMAT.md sections 2-4 and 7.

`Header.model_json_schema()` is published as `docs/header.schema.json`. Every rule of the header,
its leaf records and its tree (byte ranges, sizes, dtype names, sharding records, where ext values
may occur, the tree's structure) is checked by the Rust core before any model is built, and the
models are built from what the core decoded (`_file.header_model`): they type the fields and give
readers a typed view of a file. A nil optional key counts as absent (FORMAT.md section 2): the core
gives None for it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    NonNegativeInt,
    PlainSerializer,
    WithJsonSchema,
)

from . import _core

FORMAT_NAME = "eqx_msg"
LeafKind = Literal["numpy", "numpy_scalar", "jax", "key", "abstract"]


class _Model(BaseModel):
    # Unknown keys are not refused: later minor versions may add keys (FORMAT.md section 8). The
    # core ignores them in the header, leaf and sharding records, so a file's models hold only the
    # keys this version knows there; tree nodes keep theirs (extra="allow").
    model_config = ConfigDict(extra="allow", frozen=True)


class ShardingSpec(_Model):
    """How a jax.Array was laid out over devices when saved (a `NamedSharding`, FORMAT.md section 7).

    The Rust core checks the record (distinct axes and devices, one id per mesh place, a spec that
    names mesh axes at most once each and splits every dimension evenly) when the file is opened,
    before any model is built: these fields only type it.
    """

    mesh_axes: list[str]
    mesh_shape: list[Annotated[int, Field(strict=True, ge=1)]]
    device_ids: list[Annotated[int, Field(strict=True)]]
    spec: list[str | list[str] | None]
    memory_kind: str | None = None


class ArraySpec(_Model):
    """An array as the header describes it, without its bytes: kind, dtype, shape, and how it was
    laid out over devices. The JSON form of an `eqx_msg.pydantic.Array` field; a leaf record
    (`LeafSpec`) is one of these plus where its bytes are."""

    kind: LeafKind
    dtype: str = Field(  # the Rust core checks the name; the enum documents the table
        description="a dtype name from FORMAT.md section 5",
        json_schema_extra={"enum": list[JsonValue](_core.dtype_names())},
    )
    shape: list[NonNegativeInt]
    weak_type: bool = False
    key_impl: str | None = Field(
        None, description="typed PRNG key impl; dtype/shape are its data's"
    )
    sharding: ShardingSpec | None = None


class LeafSpec(ArraySpec):
    """One array leaf: its key path, kind, dtype, shape and byte range in the data section."""

    path: str = Field(description="the key path, as jax.tree_util.keystr writes it")
    offset: NonNegativeInt | None = Field(None, description="start, relative to the data section")
    nbytes: NonNegativeInt | None = None


class NoneNode(_Model):
    """`None`."""

    t: Literal["none"]


class ValueNode(_Model):
    """A non-array leaf stored inline as a static value (number, string, function, ...)."""

    t: Literal["value"]
    v: Any
    p: str | None = Field("", description="its key path (nil counts as absent)")


class ListNode(_Model):
    """A list."""

    t: Literal["list"]
    c: list[Node]


class TupleNode(_Model):
    """A tuple."""

    t: Literal["tuple"]
    c: list[Node]


class DictNode(_Model):
    """A dict; `k` are the keys as static values, in insertion order."""

    t: Literal["dict"]
    k: list[Any]
    c: list[Node]


class OrderedDictNode(_Model):
    """A `collections.OrderedDict`."""

    t: Literal["ordereddict"]
    k: list[Any]
    c: list[Node]


class DefaultDictNode(_Model):
    """A `collections.defaultdict` with its default factory."""

    t: Literal["defaultdict"]
    factory: Any
    k: list[Any]
    c: list[Node]


class NamedTupleNode(_Model):
    """A namedtuple of a registered class."""

    t: Literal["namedtuple"]
    cls: str
    keys: list[str] | None = Field(None, description="the field names, when written (FORMAT.md 4)")
    c: list[Node]


class CustomNode(_Model):
    """Any other registered pytree node (Equinox Module, optax state, ...): class, aux, children."""

    t: Literal["node"]
    cls: str
    aux: Any = Field(
        None, description="the flatten data (a static value); absent where `static` is given"
    )
    static: dict[str, Any] | None = Field(
        None,
        description="an Equinox Module's static fields by name, in place of `aux` (FORMAT.md 4)",
    )
    keys: list[str] | None = Field(
        None, description="each child's key as jax.tree_util.keystr writes it, when written"
    )
    c: list[Node]


class ModelNode(_Model):
    """A pydantic model: its class, its inline fields (JSON-mode values) and its array fields."""

    t: Literal["model"]
    cls: str
    static: dict[str, Any] = Field(description="the fields stored inline, by name")
    keys: list[str] = Field(description="`.field` of each child")
    c: list[Node]


# An array leaf is a bare integer (an index into Header.leaves); every other node is a map tagged "t".
Node = (
    Annotated[
        NonNegativeInt,
        Field(strict=True, description="an array leaf: an index into Header.leaves"),
    ]
    | Annotated[
        NoneNode
        | ValueNode
        | ListNode
        | TupleNode
        | DictNode
        | OrderedDictNode
        | DefaultDictNode
        | NamedTupleNode
        | CustomNode
        | ModelNode,
        Field(discriminator="t"),
    ]
)


_Checksums = Annotated[
    bytes,
    PlainSerializer(lambda b: b.hex(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base16"}),
]


class TreeView(_Model):
    """A pytree as the header describes it, without bytes: its tree of nodes (classes by name,
    static fields by name) and a record per array leaf. The JSON form of an
    `eqx_msg.pydantic.Tree` field; a file's `Header` is one of these plus its layout."""

    leaves: list[LeafSpec]
    tree: Node

    def keys(self) -> list[str]:
        """The key paths of the array leaves, in record order."""
        return [leaf.path for leaf in self.leaves]


class Header(TreeView):
    """The header of an eqx_msg file."""

    format: Literal["eqx_msg"]
    version: Literal[1]
    alignment: int = Field(ge=64, le=1 << 20, description="a power of two")
    data_nbytes: NonNegativeInt
    metadata: Any = None
    writer: dict[str, Any] = Field(
        default={}, description="software versions; eqx_msg writes str values, readers take any"
    )
    leaf_crc32c: _Checksums | None = Field(
        default=None,
        description="the CRC32C of each leaf's stored bytes, 4 little-endian bytes per leaf record "
        "(0 for abstract leaves); in JSON, as hex",
    )
    header_crc32c: int | None = Field(
        default=None,
        ge=0,
        lt=1 << 32,
        description="the CRC32C of the prefix and every header byte before its own 4 bytes; the "
        "header's last value, a msgpack uint32",
    )


for _model in (ListNode, TupleNode, DictNode, OrderedDictNode, DefaultDictNode, NamedTupleNode,
               CustomNode, ModelNode, TreeView, Header):  # fmt: skip
    _model.model_rebuild()
