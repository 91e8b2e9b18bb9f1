"""Timing, correctness checks and the physical limits every figure is compared with."""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
from _systems import NotSupported
from _workloads import Workload, is_key, leaf_nbytes


@dataclass
class Cell:
    """One table cell: a median time, or why there is none; `problem` marks a wrong result."""

    seconds: float | None = None
    status: str = "ok"  # ok | n/a | fails | wrong
    detail: str = ""
    value: float | None = None  # a figure that is not a time (bytes of a file, of RSS) ...
    text: str | None = None  # ... and how it is shown
    runs: int | None = None  # timed runs behind the median; 0 = the first (warm-up) run alone

    @property
    def usable(self) -> bool:
        """Whether this cell's figure counts in a comparison (it ran and was right)."""
        return self.status == "ok" and (self.seconds is not None or self.text is not None)


def short(err: BaseException, width: int = 90) -> str:
    """The first line of an exception, shortened for a table cell."""
    line = (str(err).strip().splitlines() or [""])[0]
    text = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def remove(path: str) -> None:
    """Delete a file or checkpoint directory if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def fresh(path: str) -> None:
    """Before a timed write: remove the old file and flush every dirty page, so that no write is
    throttled by the writeback of the one before (outside the timing)."""
    remove(path)
    os.sync()


def run_once(fn: Callable[[], Any], block: bool) -> tuple[float, Any]:
    """Time one call; jax results are waited for inside the timing."""
    start = time.perf_counter()
    out = fn()
    if block:
        jax.block_until_ready(out)
    return time.perf_counter() - start, out


SLOW = 5.0  # seconds: a first run slower than this is the cell's only run
BUDGET = 4.0  # seconds: timed runs of one cell stop once they would exceed this (but at least one)


def runs_for(first: float, repeat: int, least: int = 1) -> int:
    """How many timed runs a cell gets after its first run took `first` seconds (0: report the first).

    A first run of a few seconds may hold one-time costs (a compile per shape, say), so it is
    followed by at least `least` timed runs; only very slow first runs stand alone.
    """
    if first > SLOW:
        return 0
    return min(repeat, max(least, int(BUDGET / max(first, 1e-9))))


def timed(
    fn: Callable[[], Any],
    repeat: int,
    *,
    setup: Callable[[], None] | None = None,
    check: Callable[[Any], str | None] | None = None,
    block: bool = False,
    keep_first: bool = False,
    least: int = 1,
) -> tuple[Cell, Any]:
    """Median of up to `repeat` runs after one warm-up whose result is checked (and returned if asked).

    Slow cells get fewer runs (see `runs_for`): a peer that takes 30 s an operation is reported from
    its first run rather than stretching the whole comparison past an hour.
    """
    try:
        if setup:
            setup()
        first_seconds, first = run_once(fn, block)
        problem = check(first) if check else None
    except NotSupported as err:
        return Cell(status="n/a", detail=str(err)), None
    except Exception as err:  # any failure of a peer is a table cell, not a crash
        return Cell(status="fails", detail=short(err)), None
    kept = first if keep_first else None
    del first
    times = []
    for _ in range(runs_for(first_seconds, repeat, least)):
        if setup:
            setup()
        gc.collect()
        seconds, out = run_once(fn, block)
        times.append(seconds)
        del out
    cell = Cell(seconds=statistics.median(times or [first_seconds]), runs=len(times))
    if problem:
        cell.status, cell.detail = "wrong", problem
    return cell, kept


# ---- correctness ---------------------------------------------------------------------------------


def _bytes_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact comparison through the widest integer view that fits."""
    a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    b = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    if a.nbytes != b.nbytes:
        return False
    if a.nbytes % 8 == 0:
        a, b = a.view(np.uint64), b.view(np.uint64)
    return bool(np.array_equal(a, b))


def leaf_problem(want: Any, got: Any, kind: str) -> str | None:
    """Why `got` is not bit-exactly `want` as a `kind` ("numpy", "jax", "same", "any") leaf, or None."""
    if is_key(want):
        if not is_key(got):
            return f"PRNG key lost (got {getattr(got, 'dtype', type(got).__name__)})"
        if got.dtype != want.dtype:
            return f"key impl {want.dtype} -> {got.dtype}"
        return (
            None
            if _bytes_equal(jax.random.key_data(want), jax.random.key_data(got))
            else "key data differs"
        )
    if not hasattr(got, "dtype") or not hasattr(got, "shape"):
        return f"{type(got).__name__}, not an array"
    expected = {
        "numpy": np.ndarray,
        "jax": jax.Array,
        "same": type(want) if isinstance(want, np.ndarray) else jax.Array,
    }
    if kind in expected and not isinstance(got, expected[kind]):
        return f"{type(got).__name__} leaf, not {expected[kind].__name__}"
    if np.dtype(got.dtype) != np.dtype(want.dtype):
        return f"{np.dtype(want.dtype)} -> {np.dtype(got.dtype)}"
    if tuple(got.shape) != tuple(want.shape):
        return f"shape {tuple(want.shape)} -> {tuple(got.shape)}"
    return None if _bytes_equal(np.asarray(want), np.asarray(got)) else "bytes differ"


def tree_problem(work: Workload, got: Any, kind: str) -> str | None:
    """Why a loaded tree is not the workload (structure, then up to two leaves), or None."""
    leaves, treedef = jtu.tree_flatten(got)
    if treedef != work.treedef:
        if treedef.num_leaves != work.treedef.num_leaves:
            return f"tree structure differs ({treedef.num_leaves} leaves, not {work.treedef.num_leaves})"
        return "tree structure differs (node types or static fields)"
    problems = []
    for path, want, leaf in zip(work.paths, work.leaves, leaves):
        problem = leaf_problem(want, leaf, kind)
        if problem:
            problems.append(f"{path or 'root'}: {problem}")
    if len(problems) > 2:
        problems[2:] = [f"+{len(problems) - 2} more"]
    return "; ".join(problems) or None


def header_problem(work: Workload, listing: list[tuple[str, tuple[int, ...], Any]]) -> str | None:
    """Whether a header listing names as many leaves as the workload has."""
    if len(listing) != len(work.leaves):
        return f"{len(listing)} entries, not {len(work.leaves)}"
    return None


def abstract_problem(work: Workload, tree: Any) -> str | None:
    """Whether an abstract tree has the workload's structure, shapes and dtypes."""
    if jax.tree.structure(tree) != jax.tree.structure(work.abstract):
        return "abstract tree: not the saved structure"
    for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(work.abstract)):
        if (got.shape, got.dtype) != (want.shape, want.dtype):
            return f"abstract leaf {got.shape} {got.dtype}, not {want.shape} {want.dtype}"
    return None


# ---- physical limits -----------------------------------------------------------------------------


def contiguous_bytes(work: Workload) -> np.ndarray:
    """All leaf bytes of the workload in one uint8 array (typed keys as key data)."""
    out = np.empty(work.nbytes, np.uint8)
    position = 0
    for leaf in work.leaves:
        data = np.asarray(jax.random.key_data(leaf) if is_key(leaf) else leaf)
        n = leaf_nbytes(leaf)
        out[position : position + n] = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        position += n
    return out


def _write(path: str, data: np.ndarray, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view.nbytes:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_into(path: str, out: np.ndarray) -> None:
    with open(path, "rb", buffering=0) as f:
        view = memoryview(out)
        while view.nbytes:
            n = f.readinto(view)
            if not n:
                raise EOFError(path)
            view = view[n:]


def host_leaves(work: Workload) -> list[np.ndarray]:
    """Every array leaf as a numpy array (key data for PRNG keys): what `device_put(list)` gets."""
    return [np.array(jax.random.key_data(x) if is_key(x) else x) for x in work.leaves]


def limits(work: Workload, directory: str, repeat: int) -> dict[str, float]:
    """Median seconds of memcpy, os.write (with/without fsync), readinto and device_put(list)."""
    src = contiguous_bytes(work)
    dst = np.empty_like(src)
    dst.fill(1)  # pre-fault: the limit is the copy, not first-touch page faults
    path = os.path.join(directory, "limit.raw")
    host = host_leaves(work)
    ops: dict[str, tuple[Callable[[], Any], Callable[[], None] | None]] = {
        "memcpy": (lambda: np.copyto(dst, src), None),
        # What producing new bytes costs at least: the kernel zeroes each fresh page on first touch.
        "memcpy to a new buffer": (lambda: src.copy(), None),
        "os.write": (lambda: _write(path, src, False), lambda: fresh(path)),
        "os.write+fsync": (lambda: _write(path, src, True), lambda: fresh(path)),
        "readinto": (
            lambda: _read_into(path, dst),
            lambda: None if os.path.exists(path) else _write(path, src, False),
        ),
        "device_put(list)": (lambda: jax.device_put(host), None),
    }
    out = {}
    for name, (fn, setup) in ops.items():
        cell, _ = timed(fn, repeat, setup=setup, block=True)
        out[name] = cell.seconds if cell.seconds is not None else float("nan")
    remove(path)
    return out


def paired(
    fn: Callable[[], Any], reference: Callable[[], Any], runs: int
) -> tuple[float, float, float]:
    """`(median fn s, median reference s, median of the per-pair ratios reference / fn)`.

    The two run alternately, each pair back to back (jax results waited for), so that a noisy
    machine's slow and fast spells hit both sides of every ratio alike.
    """
    run_once(fn, True), run_once(reference, True)  # warm-up
    mine, theirs = [], []
    for _ in range(runs):
        gc.collect()
        mine.append(run_once(fn, True)[0])
        gc.collect()
        theirs.append(run_once(reference, True)[0])
    ratios = [t / m for m, t in zip(mine, theirs)]
    return statistics.median(mine), statistics.median(theirs), statistics.median(ratios)


def size_on_disk(path: str) -> int:
    """Bytes of a file, or of every file under a checkpoint directory."""
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files
        )
    return os.path.getsize(path)
