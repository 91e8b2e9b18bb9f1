"""Interleaved A/B timing of two eqx_msg builds, and the checksum costs of issue #7 (one run).

    python benches/ab.py --b /tmp/old/python            # this tree (A) against another build (B)
    python benches/ab.py                                 # A alone: the checksum rows only
    python benches/ab.py --size-mib 256 --rounds 3       # quicker

B is a directory holding an `eqx_msg` package with its built `_core` extension (e.g. a worktree of
an older commit: `git worktree add /tmp/old COMMIT`, `maturin build --release`, and the wheel's
`_core.abi3.so` copied into `/tmp/old/python/eqx_msg/`). Each build runs in its own worker
process; each round times every operation once in each, A first in one round and B first in the
next (the second of a pair meets warmer caches), so drift on a shared machine hits both alike. Cells are medians over the rounds; the last column is B / A (above 1: A is faster).

Rows: W1 (a ~1 GiB transformer Module, jax leaves) save + fsync and the same bytes written with
os.write + fsync in the same worker, and save into a file object opened "wb" against os.write; W1 load (zero-copy) and `verify` of W1 from the page cache
against one memcpy of its bytes into a warm buffer; W2 (10,000 small leaves) save + fsync against
pickle + fsync, dumps, loads, and open + abstract tree + one leaf.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _fsync_write(path: str, data: Any, fsync: bool = True) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def worker(size_mib: float, directory: str) -> None:
    """Serve `op` names on stdin, answering each with its time in seconds on stdout."""
    sys.path.insert(0, HERE)
    import _workloads
    import numpy as np
    from _workloads import Sizes, build

    import eqx_msg

    for cls in (_workloads.Transformer, _workloads.Block, _workloads.Linear, _workloads.LayerNorm):
        eqx_msg.register(cls)

    sizes = Sizes.of(False, size_mib)
    w1 = build("W1", sizes).tree
    w2 = build("W2-np", sizes).tree
    p1, p2, scratch = (os.path.join(directory, n) for n in ("w1.eqx", "w2.eqx", "raw"))
    eqx_msg.save(p1, w1)
    eqx_msg.save(p2, w2)
    w1_bytes = pathlib.Path(p1).read_bytes()
    w2_bytes = eqx_msg.dumps(w2)
    buffer = np.frombuffer(w1_bytes, np.uint8)
    warm = np.empty_like(buffer)
    has_verify = hasattr(eqx_msg, "verify")
    one_leaf = ".blocks[4].up.weight"

    def save_into_open_file(tree: Any) -> None:
        with open(scratch + ".eqx", "wb") as f:
            eqx_msg.save(f, tree)

    def open_one_leaf() -> None:
        with eqx_msg.open(p1) as r:
            r[one_leaf]

    def open_abstract_one() -> None:
        with eqx_msg.open(p2) as r:
            r.abstract()
            r["[50]['listed'][25]"]

    ops = {
        "W1 save + fsync": lambda: eqx_msg.save(p1, w1),
        "W1 os.write + fsync (limit)": lambda: _fsync_write(scratch, w1_bytes),
        "W1 save into an open file (no fsync)": lambda: save_into_open_file(w1),
        "W1 os.write (limit)": lambda: _fsync_write(scratch, w1_bytes, fsync=False),
        "W1 load -> jax": lambda: eqx_msg.load(p1),
        "W1 open + one leaf": open_one_leaf,
        "W1 verify (page cache)": (lambda: eqx_msg.verify(p1)) if has_verify else None,
        "W1 memcpy (limit)": lambda: np.copyto(warm, buffer),
        "W2 save + fsync": lambda: eqx_msg.save(p2, w2),
        "W2 pickle + fsync (peer)": lambda: _fsync_write(scratch, pickle.dumps(w2, protocol=5)),
        "W2 dumps": lambda: eqx_msg.dumps(w2),
        "W2 loads": lambda: eqx_msg.loads(w2_bytes),
        "W2 open + abstract + one leaf": open_abstract_one,
    }
    # Untimed, after an op that leaves 1 GiB of dirty pages: the file is removed (its pages dropped,
    # never written back), so the kernel's writeback of one op cannot throttle the next op's writes.
    after = {
        "W1 save into an open file (no fsync)": lambda: os.unlink(scratch + ".eqx"),
        "W1 os.write (limit)": lambda: os.unlink(scratch),
    }
    print(json.dumps(sorted(k for k, v in ops.items() if v is not None)), flush=True)
    for line in sys.stdin:
        op = line.strip()
        fn = ops[op]
        assert fn is not None
        start = time.perf_counter()
        fn()
        print(time.perf_counter() - start, flush=True)
        if op in after:
            after[op]()


class Worker:
    def __init__(self, pythonpath: str, size_mib: float, directory: str):
        env = dict(os.environ, PYTHONPATH=pythonpath, XLA_FLAGS="")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--size-mib",
            str(size_mib),
            "--dir",
            directory,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        assert self.proc.stdout is not None
        self.ops: list[str] = json.loads(self.proc.stdout.readline())

    def time(self, op: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(op + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--b", help="PYTHONPATH of build B (omit: A alone)")
    parser.add_argument("--size-mib", type=float, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.size_mib, args.dir)
        return 0
    with tempfile.TemporaryDirectory(dir=os.environ.get("EQX_MSG_BENCH_DIR")) as tmp:
        dirs = [os.path.join(tmp, n) for n in "ab"]
        for d in dirs:
            os.mkdir(d)
        builds = {"A": Worker(os.path.join(ROOT, "python"), args.size_mib, dirs[0])}
        if args.b:
            builds["B"] = Worker(args.b, args.size_mib, dirs[1])
        ops = builds["A"].ops
        times: dict[tuple[str, str], list[float]] = {}
        order = list(builds.items())
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for op in ops:
                for name, w in order:
                    if op in w.ops:
                        times.setdefault((name, op), []).append(w.time(op))
            # Whichever build runs second in a pair meets warmer caches (or a busier disk): the
            # order flips every round, so neither build has it always.
            order.reverse()
        for w in builds.values():
            w.close()
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    print(f"median of {args.rounds} interleaved rounds, W1 = {args.size_mib:g} MiB")
    print("| operation | A (this tree) | B | B / A |")
    print("|---|---|---|---|")
    for op in ops:
        a, b = med.get(("A", op)), med.get(("B", op))
        ratio = f"{b / a:.2f}" if a and b else "-"
        print(f"| {op} | {fmt(a)} | {fmt(b)} | {ratio} |")
    a = lambda op: med[("A", op)]  # noqa: E731
    print()
    print(
        f"W1 save + fsync / os.write + fsync: {a('W1 save + fsync') / a('W1 os.write + fsync (limit)'):.3f} (target <= 1.05)"
    )
    print(
        f"W1 save into an open file / os.write: {a('W1 save into an open file (no fsync)') / a('W1 os.write (limit)'):.3f}"
    )
    print(
        f"W1 verify throughput / memcpy throughput: {a('W1 memcpy (limit)') / a('W1 verify (page cache)'):.2f} (target >= 0.8)"
    )
    print(
        f"W2 save + fsync / pickle + fsync: {a('W2 save + fsync') / a('W2 pickle + fsync (peer)'):.2f} (target <= 1.0)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
