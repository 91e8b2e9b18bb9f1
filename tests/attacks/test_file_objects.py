"""`save(file_object, tree)` (commit e1f95db: a regular file that ends at its position is written by
positional writes, `io._writer._positional_fd` / `_appends`; others are streamed) must be the same
as `file_object.write(eqx_msg.dumps(tree))`: the same bytes at the same place, nothing before or
after disturbed, and the file object left where that write would leave it (`tell()`), in every
mode and state a file object can be in.

Each case is run twice on two copies of one file: once with `eqx_msg.save`, once with a plain
`write` of `eqx_msg.dumps`; the files and the positions must agree.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import eqx_msg

SMALL = {"a": np.arange(100, dtype=np.float32), "b": np.ones((3, 5), np.int8), "c": 3}
# Large leaves take the multi-threaded positional writer and the streamed path's chunking; more
# than the 8 KiB of a BufferedWriter.
LARGE = {
    "w": np.arange(3 * 2**20 // 4, dtype=np.float32).reshape(-1, 256),
    "v": [np.full(i + 1, i, np.int16) for i in range(40)],
}
PRE = b"0123456789" * 10  # what the file holds before


def _opener(mode: str, at: int | None = None, *, pre_write: bytes = b"", read: int | None = None,
            buffering: int = -1) -> Callable[[Path], Any]:  # fmt: skip
    def make(path: Path) -> Any:
        f = open(path, mode, buffering=buffering)  # noqa: SIM115
        if read is not None:
            f.read(read)  # (a read-ahead buffer)
        if at is not None:
            f.seek(at)
        if pre_write:
            f.write(pre_write)  # (not flushed)
        return f

    return make


def _fdopen(flags: int, mode: str) -> Callable[[Path], Any]:
    def make(path: Path) -> Any:
        return os.fdopen(os.open(path, flags), mode)

    return make


CASES: dict[str, tuple[bytes | None, Callable[[Path], Any]]] = {
    "wb": (None, _opener("wb")),
    "wb over a file": (PRE, _opener("wb")),
    "w+b": (None, _opener("w+b")),
    "xb": (None, _opener("xb")),
    "wb, unflushed data first": (None, _opener("wb", pre_write=b"PRE")),
    "wb, unbuffered": (None, _opener("wb", buffering=0)),
    "wb, sought past the end": (None, _opener("wb", at=100)),
    "w+b, written then sought back": (None, _opener("w+b", pre_write=PRE, at=0)),
    "w+b, written then sought into it": (None, _opener("w+b", pre_write=PRE, at=37)),
    "ab": (PRE, _opener("ab")),
    "ab, sought to 0": (PRE, _opener("ab", at=0)),
    "ab, unbuffered": (PRE, _opener("ab", buffering=0)),
    "a+b, sought to 5": (PRE, _opener("a+b", at=5)),
    "r+b at its end": (PRE, _opener("r+b", at=len(PRE))),
    "r+b at 0 (a tail after)": (PRE, _opener("r+b", at=0)),
    "r+b in the middle": (PRE, _opener("r+b", at=50)),
    "r+b past the end": (PRE, _opener("r+b", at=len(PRE) + 1000)),
    "r+b, read to the end": (PRE, _opener("r+b", read=-1)),
    "r+b, partly read": (PRE, _opener("r+b", read=3)),
    "r+b, unflushed data at the end": (PRE, _opener("r+b", at=len(PRE), pre_write=b"xyz")),
    "r+b, unflushed data mid-file": (PRE, _opener("r+b", at=10, pre_write=b"xyz")),
    "r+b, unbuffered, at the end": (PRE, _opener("r+b", at=len(PRE), buffering=0)),
    "r+b, unbuffered, in the middle": (PRE, _opener("r+b", at=20, buffering=0)),
    "fdopen O_APPEND as wb": (PRE, _fdopen(os.O_WRONLY | os.O_APPEND, "wb")),
    "fdopen O_APPEND|O_RDWR as r+b": (PRE, _fdopen(os.O_RDWR | os.O_APPEND, "r+b")),
    "fdopen O_WRONLY as wb": (PRE, _fdopen(os.O_WRONLY, "wb")),
}


@pytest.mark.parametrize("tree", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("name", CASES)
def test_save_into_a_file_object_is_a_write_of_dumps(name, tree, tmp_path):
    pre, make = CASES[name]
    ref = eqx_msg.dumps(tree)
    mine, twin = tmp_path / "mine", tmp_path / "twin"
    if pre is not None:
        mine.write_bytes(pre)
        twin.write_bytes(pre)
    f, g = make(mine), make(twin)
    try:
        eqx_msg.save(f, tree)
        written = g.write(ref)
        assert written == len(ref)
        assert f.tell() == g.tell()
        f.flush()
        g.flush()
        assert f.tell() == g.tell()
        if f.readable():  # what the file object reads back (no stale read buffer)
            f.seek(0)
            g.seek(0)
            assert f.read() == g.read()
    finally:
        f.close()
        g.close()
    assert mine.read_bytes() == twin.read_bytes()
    assert eqx_msg.loads(mine.read_bytes()[mine.read_bytes().find(b"EQXMSG") :]) is not None


def test_after_save_the_file_object_writes_on_from_its_end(tmp_path):
    path = tmp_path / "f"
    ref = eqx_msg.dumps(SMALL)
    with open(path, "wb") as f:
        f.write(b"HEAD")
        eqx_msg.save(f, SMALL)
        assert f.tell() == 4 + len(ref)
        f.write(b"TAIL")
        eqx_msg.save(f, SMALL)  # twice in one file
        assert f.tell() == 8 + 2 * len(ref)
    assert path.read_bytes() == b"HEAD" + ref + b"TAIL" + ref


def test_a_pipe_is_streamed_in_order():
    ref = eqx_msg.dumps(LARGE)
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(os.fdopen(r, "rb").read()))
    reader.start()
    with os.fdopen(w, "wb") as f:
        f.write(b"HEAD")
        eqx_msg.save(f, LARGE)
    reader.join()
    assert got == [b"HEAD" + ref]


@pytest.mark.parametrize("at", [0, 4, 50, 100, 150])
def test_bytesio_at_any_position(at):
    ref = eqx_msg.dumps(SMALL)
    mine, twin = io.BytesIO(PRE), io.BytesIO(PRE)
    mine.seek(at)
    twin.seek(at)
    eqx_msg.save(mine, SMALL)
    twin.write(ref)
    assert mine.getvalue() == twin.getvalue() and mine.tell() == twin.tell() == at + len(ref)


@pytest.mark.parametrize("kind", ["spooled", "temporary", "named"])
def test_tempfile_objects(kind):
    ref = eqx_msg.dumps(SMALL)
    make = {
        "spooled": lambda: tempfile.SpooledTemporaryFile(max_size=10**7),  # noqa: SIM115
        "temporary": tempfile.TemporaryFile,
        "named": tempfile.NamedTemporaryFile,
    }[kind]
    with make() as f, make() as g:
        for h in (f, g):
            h.write(b"HEAD")
        eqx_msg.save(f, SMALL)
        g.write(ref)
        assert f.tell() == g.tell() == 4 + len(ref)
        f.seek(0)
        g.seek(0)
        assert f.read() == g.read() == b"HEAD" + ref


class _Hashing:
    """A file object that hashes what is written through it (as upload or progress wrappers do),
    delegating everything else, `fileno` included, to a real file."""

    def __init__(self, f: Any):
        self._f = f
        self.sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def test_save_into_a_gzip_file_writes_compressed_bytes(tmp_path):
    path = tmp_path / "f.eqx.gz"
    ref = eqx_msg.dumps(SMALL)
    with gzip.open(path, "wb") as g:
        g.write(b"\0" * 100_000)  # compresses to far fewer bytes than its offset
        eqx_msg.save(g, SMALL)
        assert g.tell() == 100_000 + len(ref)
    assert gzip.decompress(path.read_bytes()) == b"\0" * 100_000 + ref


def test_save_into_a_fresh_gzip_file_is_refused_or_compressed(tmp_path):
    """At position 0 the underlying file already holds gzip's header (bigger than 0): streamed."""
    path = tmp_path / "f.eqx.gz"
    with gzip.open(path, "wb") as g:
        try:
            eqx_msg.save(g, SMALL)
        except OSError:  # (the streamed path seeks back: a GzipFile refuses that)
            return
    assert gzip.decompress(path.read_bytes()) == eqx_msg.dumps(SMALL)


def test_save_writes_through_a_wrapping_file_objects_write(tmp_path):
    ref = eqx_msg.dumps(SMALL)
    with open(tmp_path / "f", "wb") as raw:
        f = _Hashing(raw)
        eqx_msg.save(f, SMALL)
    assert (tmp_path / "f").read_bytes() == ref
    assert f.sha.hexdigest() == hashlib.sha256(ref).hexdigest()


def test_a_read_only_file_object_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PRE)
    with open(path, "rb") as f, pytest.raises((OSError, eqx_msg.EqxMsgError)):
        eqx_msg.save(f, SMALL)
    assert path.read_bytes() == PRE
