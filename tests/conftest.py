"""Shared test helpers. Eight host CPU devices are forced so sharding tests run anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import functools  # noqa: E402
import math  # noqa: E402
import struct  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def frame(header: dict, data: bytes, alignment: int = 64, version: int = 1) -> bytes:
    """Frame a header and data exactly as FORMAT.md says, with no checks (a hostile writer)."""
    encoded = msgpack.packb(header)
    start = 16 + len(encoded)
    pad = (-start) % alignment
    return b"EQXMSG" + struct.pack("<HQ", version, len(encoded)) + encoded + bytes(pad) + data


def parts(data: bytes) -> tuple[bytes, dict, bytes]:
    """(magic and version, header map, data section) of an eqx_msg file, read with plain msgpack."""
    (header_len,) = struct.unpack_from("<Q", data, 8)
    header = msgpack.unpackb(data[16 : 16 + header_len], raw=False, strict_map_key=False)
    start = -(-(16 + header_len) // header["alignment"]) * header["alignment"]
    return data[:8], header, data[start:]


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), written from its definition: an
    independent check of the Rust core's. Slow: for test files of a few KiB."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def reseal(data: bytes | bytearray) -> bytes:
    """A file whose header was patched in place (same length), its header checksum made right
    again (FORMAT.md section 9: the CRC32C of every byte before the header's last 4)."""
    (header_len,) = struct.unpack_from("<Q", data, 8)
    end = 16 + header_len
    return bytes(data[: end - 4]) + struct.pack(">I", crc32c(data[: end - 4])) + bytes(data[end:])


def reframe(data: bytes, edit: Callable[[dict], Any]) -> bytes:
    """An eqx_msg file with its header changed by `edit`, its data section unchanged; written
    without checksums (as files before them were), since the edit may change what they cover."""
    _, header, section = parts(data)
    header.pop("leaf_crc32c", None)
    header.pop("header_crc32c", None)
    edit(header)
    return frame(header, section, header["alignment"], struct.unpack_from("<H", data, 6)[0])


def format_dtype(name: str) -> np.dtype:
    """The numpy dtype of a name in the format's dtype table; skips the test (saying why) if the
    installed ml_dtypes has no such type (the table follows the newest ml_dtypes)."""
    import ml_dtypes

    found = getattr(ml_dtypes, name, None)
    if found is not None:
        return np.dtype(found)
    try:
        return np.dtype(name)
    except TypeError:
        pytest.skip(f"the installed ml_dtypes {ml_dtypes.__version__} has no {name}")


def jax_holds(dtype: np.dtype) -> bool:
    """Whether a jax.Array can be made of `dtype` with the installed JAX."""
    try:
        jax.numpy.asarray(np.zeros(1, dtype)).block_until_ready()
    except Exception:
        return False
    return True


def leaf_bytes(x: Any) -> bytes:
    """The exact bytes of an array leaf (key data for PRNG keys)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.ascontiguousarray(np.asarray(x)).tobytes()


def assert_same_tree(original: Any, loaded: Any) -> None:
    """Same treedef, and every leaf of the same kind, dtype, shape and bit-exact contents."""
    assert jax.tree.structure(loaded) == jax.tree.structure(original)
    for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(loaded), strict=True):
        assert type(a) is type(b), (type(a), type(b))
        if isinstance(a, np.ndarray | jax.Array | np.generic):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert leaf_bytes(a) == leaf_bytes(b)
            if isinstance(a, jax.Array) and not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                assert a.weak_type == b.weak_type
        elif isinstance(a, float) and math.isnan(a):
            assert math.isnan(b)
        else:
            assert _as_compared(a) == _as_compared(b)


def _as_compared(x: Any) -> Any:
    """`x`, with each functools.partial (equal only to itself) made a comparable tuple."""
    if isinstance(x, functools.partial):
        keywords = {k: _as_compared(v) for k, v in x.keywords.items()}
        return ("partial", x.func, tuple(map(_as_compared, x.args)), keywords)
    return x


@pytest.fixture
def as_another_process(monkeypatch):
    """Call after saving: from then on the test loads as a process that did not save those classes
    (the registry alone, not the classes this process saved, is trusted)."""
    from eqx_msg import _registry

    return lambda: monkeypatch.setattr(_registry, "_saved_here", {})


@pytest.fixture
def roundtrip():
    """Round-trip through dumps/loads and check the result is the same tree."""
    import eqx_msg

    def run(tree: Any, **kwargs: Any) -> Any:
        loaded = eqx_msg.loads(eqx_msg.dumps(tree), **kwargs)
        assert_same_tree(tree, loaded)
        return loaded

    return run
