"""Checksums (FORMAT.md section 9): every flipped bit is found, damaged leaves are named, every
writer seals the same file, and files written before checksums still load."""

import io
import os
import struct

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

import eqx_msg
from eqx_msg import _core

from conftest import crc32c, parts, reframe, reseal

SMALL = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [np.int8(3), 2.5], "k": "s"}


def small_file() -> bytes:
    return eqx_msg.dumps(SMALL, metadata={"step": 3})


def header_end(data: bytes) -> int:
    return 16 + struct.unpack_from("<Q", data, 8)[0]


def test_the_checksums_are_crc32c_of_what_section_9_says():
    data = small_file()
    _, header, section = parts(data)
    end = header_end(data)
    assert list(header)[-2:] == ["leaf_crc32c", "header_crc32c"]  # last in the map, in this order
    assert data[end - 19 : end - 4] == b"\xadheader_crc32c\xce"
    assert header["header_crc32c"] == crc32c(data[: end - 4])  # independent CRC-32C
    sums = struct.unpack(f"<{len(header['leaves'])}I", header["leaf_crc32c"])
    for leaf, crc in zip(header["leaves"], sums):
        stored = section[leaf["offset"] : leaf["offset"] + leaf["nbytes"]]
        assert crc == crc32c(stored), leaf["path"]
    assert _core.crc32c(np.frombuffer(b"123456789", np.uint8)) == 0xE3069283


def test_every_single_flipped_bit_is_found_by_verify():
    data = small_file()
    end = header_end(data)
    for byte in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[byte] ^= 1 << bit
            with pytest.raises(eqx_msg.EqxMsgError) as caught:
                eqx_msg.verify(bytes(bad))
            if 16 <= byte < end - 19 or byte >= end:  # past the prefix and the seal's marker
                assert isinstance(caught.value, eqx_msg.ChecksumError), (byte, bit, caught.value)


def test_verify_names_every_damaged_leaf_on_every_entry_point(tmp_path):
    tree = {f"x{i}": np.full((100,), i, np.float32) for i in range(4)}
    data = bytearray(eqx_msg.dumps(tree))
    _, header, _ = parts(bytes(data))
    start = len(data) - header["data_nbytes"]
    for leaf in header["leaves"]:
        if leaf["path"] in ("['x1']", "['x3']"):
            data[start + leaf["offset"] + 7] ^= 0x10
    path = tmp_path / "bad.eqx"
    path.write_bytes(data)
    checks = [
        lambda: eqx_msg.verify(bytes(data)),
        lambda: eqx_msg.verify(path),
        lambda: eqx_msg.verify(str(path)),
        lambda: eqx_msg.loads(bytes(data), verify=True),
        lambda: eqx_msg.load(path, verify=True),
        lambda: eqx_msg.open(path).verify(),
    ]
    for check in checks:
        with pytest.raises(eqx_msg.ChecksumError, match=r"2 leaves .*\['x1'\].*\['x3'\]") as e:
            check()
        assert e.value.paths == ["['x1']", "['x3']"] and not e.value.header
    # Without verify, damaged data loads (zero-copy loads do not read every byte): say so.
    assert eqx_msg.loads(bytes(data))["x1"][1] != 1.0  # byte 7: the top byte of element 1


def test_a_damaged_header_is_refused_at_open_by_every_entry_point(tmp_path):
    data = bytearray(small_file())
    at = bytes(data).index(b"step") + 1  # inside the metadata: still valid msgpack after the flip
    data[at] ^= 0x01
    path = tmp_path / "bad.eqx"
    path.write_bytes(data)
    for check in (
        lambda: eqx_msg.header(bytes(data)),
        lambda: eqx_msg.loads(bytes(data)),
        lambda: eqx_msg.load(path),
        lambda: eqx_msg.open(path),
        lambda: eqx_msg.verify(path),
    ):
        with pytest.raises(eqx_msg.ChecksumError, match="header is damaged") as e:
            check()
        assert e.value.header and e.value.paths == []
    # The same edit with the checksum made right again is a good file (the edit was the metadata).
    assert eqx_msg.header(reseal(data)).metadata == {"suep": 3}
    eqx_msg.verify(reseal(data))


def test_nonzero_header_padding_is_refused_with_or_without_checksums():
    for data in (small_file(), reframe(small_file(), lambda h: None)):
        end = header_end(data)
        start = len(data) - parts(data)[1]["data_nbytes"]
        assert start > end, "the test needs header padding"
        bad = data[: start - 1] + b"\x01" + data[start:]
        for check in (eqx_msg.header, eqx_msg.loads, eqx_msg.verify):
            with pytest.raises(eqx_msg.ChecksumError, match=f"byte {start - 1} .*padding"):
                check(bad)


def test_nonzero_padding_between_leaves_fails_verify_only():
    data = bytearray(small_file())
    _, header, _ = parts(bytes(data))
    start = len(data) - header["data_nbytes"]
    first = min(header["leaves"], key=lambda r: r.get("offset") or 0)
    gap = start + first["offset"] + first["nbytes"]  # the padding after the first leaf
    data[gap] = 0x55
    eqx_msg.loads(bytes(data))  # readers need not read padding
    with pytest.raises(eqx_msg.ChecksumError, match=f"byte {gap} .*between leaves"):
        eqx_msg.verify(bytes(data))


def test_files_without_checksums_load_but_do_not_verify():
    old = reframe(small_file(), lambda h: None)
    assert "header_crc32c" not in parts(old)[1]
    assert eqx_msg.loads(old)["k"] == "s"
    assert eqx_msg.header(old).leaf_crc32c is None
    with pytest.raises(eqx_msg.ChecksumError, match="no checksums .*save it again"):
        eqx_msg.loads(old, verify=True)


class _Pipe(io.RawIOBase):
    """A write-only stream that cannot seek (a pipe, a socket)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        self.chunks.append(bytes(b))
        return len(b)


def test_every_writer_seals_the_same_file(tmp_path):
    # Leaves big enough for the parallel positional writer (pieces of 8 MiB), small ones gathered
    # into blocks, an abstract leaf, and a jax array sharded by rows over the 8 CPU devices.
    mesh = jax.make_mesh((8,), ("x",))
    sharded = jax.device_put(
        jnp.arange(64 * 1024, dtype=jnp.float32).reshape(64, 1024),
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x")),
    )
    tree = {
        "big": np.arange(5 << 20, dtype=np.float32),  # 20 MiB
        "small": [np.full((n,), n, np.int16) for n in range(50)],
        "abstract": jax.ShapeDtypeStruct((3,), jnp.float32),
        "sharded": sharded,
    }
    reference = eqx_msg.dumps(tree)
    eqx_msg.verify(reference)
    path = tmp_path / "t.eqx"
    eqx_msg.save(path, tree)
    assert path.read_bytes() == reference
    seekable = io.BytesIO(b"lead")
    seekable.seek(4)
    eqx_msg.save(seekable, tree)
    assert seekable.getvalue() == b"lead" + reference
    pipe = _Pipe()
    eqx_msg.save(pipe, tree)
    assert b"".join(pipe.chunks) == reference
    out = np.zeros(eqx_msg.dumps_size(tree) + 10, np.uint8)
    assert eqx_msg.dumps_into(tree, out) == len(reference)
    assert out[: len(reference)].tobytes() == reference
    assert os.listdir(tmp_path) == ["t.eqx"]


def test_crc32c_pieces_combine():
    a, b = np.frombuffer(b"hello ", np.uint8), np.frombuffer(b"world", np.uint8)
    whole = _core.crc32c(np.frombuffer(b"hello world", np.uint8))
    assert _core.crc32c_combine(_core.crc32c(a), _core.crc32c(b), 5) == whole
    assert _core.crc32c(b, _core.crc32c(a)) == whole


def test_the_writer_refuses_a_header_that_already_has_checksums():
    data = small_file()
    header = msgpack.unpackb(data[16 : header_end(data)])
    with pytest.raises(eqx_msg.HeaderError, match="already has them"):
        _core.FileFrame(msgpack.packb(header))
