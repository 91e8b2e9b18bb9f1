"""Placing a checkpoint on one GPU from a warm page cache: eqx_msg against its peers and raw device_put.

    python benches/gpu_load.py                        # 4 GiB in 64 float32 leaves, then 10,000 small leaves
    python benches/gpu_load.py --size-gib 1 --out /tmp/results
    python benches/gpu_load.py --allow-cpu --size-gib 0.25   # the same on the CPU, to test the script

Each row is the median of --repeat runs after one warm-up; every file is read once beforehand so the
page cache is warm, and results are waited for with `jax.block_until_ready` (torch: synchronize).
The warm-up's result is checked: every leaf on the target device with the right shape and dtype, and
the first and last leaves bit-exact. A peer that is not installed or fails becomes a row, not a crash.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

LEAVES = 64
THREADS = 4  # for the threaded device_put experiment
SMALL_LEAVES = 10_000
SMALL_FLOATS = 16
GB = 1e9


@dataclass
class Row:
    """One method's result: a median time, or why there is none."""

    method: str
    seconds: float | None = None
    problem: str = ""  # "n/a: ...", "fails: ...", "wrong result: ..."


class NotAvailable(Exception):
    """A peer that is not installed here."""


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def short(err: BaseException) -> str:
    """The first line of an exception, for a table cell."""
    text = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    return text if len(text) <= 100 else text[:97] + "..."


def median_time(
    fn: Callable[[], Any], repeat: int, sync: Callable[[Any], None]
) -> tuple[float, Any]:
    """(median seconds of `repeat` runs, the warm-up's result); `sync` waits for a result."""
    first = fn()
    sync(first)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        sync(out)
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times), first


def warm(path: str) -> None:
    """Read a file or directory once so its pages are in the page cache."""
    files = (
        [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        if os.path.isdir(path)
        else [path]
    )
    buf = bytearray(64 << 20)
    for name in files:
        with open(name, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def check(result: Any, originals: list[np.ndarray], device: Any) -> str:
    """Why `result` (a dict or list of arrays) is not the originals in `device`'s own memory, or ''."""
    leaves = list(result.values()) if isinstance(result, dict) else list(result)
    if len(leaves) != len(originals):
        return f"{len(leaves)} leaves, not {len(originals)}"
    for i, (leaf, want) in enumerate(zip(leaves, originals)):
        if isinstance(leaf, jax.Array) and leaf.devices() != {device}:
            return f"leaf {i} on {leaf.devices()}, not {device}"
        if isinstance(leaf, jax.Array) and leaf.sharding.memory_kind not in (None, "device"):
            return f"leaf {i} in {leaf.sharding.memory_kind} memory, not the device's"
        if tuple(leaf.shape) != want.shape or str(leaf.dtype).removeprefix("torch.") != str(
            want.dtype
        ):
            return f"leaf {i}: {leaf.dtype}{tuple(leaf.shape)}, not {want.dtype}{want.shape}"
    for i in (0, len(leaves) - 1):
        leaf = leaves[i]
        host = leaf.cpu().numpy() if hasattr(leaf, "cpu") else np.asarray(leaf)
        if not np.array_equal(host.view(np.uint32), originals[i].view(np.uint32)):  # bit-exact
            return f"leaf {i}: bytes differ"
    return ""


def run(
    method: str,
    fn: Callable[[], Any],
    repeat: int,
    sync: Callable[[Any], None],
    verify: Callable[[Any], str],
) -> Row:
    """Time one method; every failure becomes the row's text."""
    log(f"  {method}")
    try:
        seconds, first = median_time(fn, repeat, sync)
        problem = verify(first)
    except NotAvailable as err:
        return Row(method, problem=f"n/a: {err}")
    except Exception as err:  # a failing peer is a row, not a crash
        return Row(method, problem=f"fails: {short(err)}")
    return Row(method, seconds, f"wrong result: {problem}" if problem else "")


def block(tree: Any) -> None:
    """Wait for jax arrays."""
    jax.block_until_ready(tree)


def torch_sync(_: Any) -> None:
    """Wait for CUDA work of torch."""
    import torch

    torch.cuda.synchronize()


# ---- the files ---------------------------------------------------------------------------------


def make_arrays(total_bytes: int, count: int) -> list[np.ndarray]:
    """`count` float32 arrays of seeded noise totalling `total_bytes` (rows of 4096 floats)."""
    rng = np.random.default_rng(0)
    rows = max(1, total_bytes // count // (4096 * 4))
    return [rng.random((rows, 4096), dtype=np.float32) for _ in range(count)]


def save_all(
    directory: str, names: list[str], arrays: list[np.ndarray], device: Any
) -> dict[str, str]:
    """Write the big tree with every system that is importable; returns {system: path}."""
    paths: dict[str, str] = {}
    raw = os.path.join(directory, "tree.raw")
    with open(raw, "wb") as f:
        for array in arrays:
            f.write(array.data)
    paths["raw"] = raw
    on_device = {n: jax.device_put(a, device) for n, a in zip(names, arrays)}
    for name, filename in (
        ("eqx_msg", "tree.eqx"),
        ("safetensors", "tree.safetensors"),
        ("orbax", "tree.orbax"),
    ):
        path = os.path.join(directory, filename)
        try:
            _save_with(name, path, on_device)
            paths[name] = path
        except Exception as err:
            log(f"  {name}: save failed: {short(err)}")
            paths[name] = f"fails: save: {short(err)}"
    del on_device
    for path in paths.values():
        if os.path.exists(path):
            warm(path)
    return paths


def _save_with(system: str, path: str, tree: dict[str, Any]) -> None:
    """Save `tree` to `path` with one system."""
    if system == "eqx_msg":
        _eqx_msg().save(path, tree)
    elif system == "safetensors":
        _import("safetensors.flax").save_file(tree, path)
    else:
        _orbax_save(path, tree)


def _import(name: str) -> Any:
    """Import a peer, turning its absence into NotAvailable."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise NotAvailable(f"{name} not importable ({err})") from None


def _eqx_msg() -> Any:
    return _import("eqx_msg")


def _orbax() -> Any:
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    return _import("orbax.checkpoint")


def _orbax_save(path: str, tree: dict[str, Any]) -> None:
    ckpt = _orbax().StandardCheckpointer()
    ckpt.save(path, tree)
    ckpt.wait_until_finished()


# ---- the methods -------------------------------------------------------------------------------


def big_rows(
    paths: dict[str, str], names: list[str], arrays: list[np.ndarray], device: Any, repeat: int
) -> list[Row]:
    """Every way of putting the big tree on `device`."""
    verify = lambda result: check(result, arrays, device)  # noqa: E731
    shape = arrays[0].shape

    def needs(system: str) -> str:
        path = paths.get(system, "fails: not saved")
        if not os.path.exists(path):
            raise RuntimeError(path)
        return path

    def safetensors_flax() -> Any:
        loaded = _import("safetensors.flax").load_file(needs("safetensors"))
        return jax.device_put(loaded, device)

    def safetensors_torch() -> Any:
        torch = _import("torch")
        if not torch.cuda.is_available():
            raise NotAvailable("torch has no CUDA device")
        return _import("safetensors.torch").load_file(needs("safetensors"), device="cuda")

    def orbax_restore() -> Any:
        sharding = jax.sharding.SingleDeviceSharding(device)
        target = {
            n: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
            for n, a in zip(names, arrays)
        }
        return _orbax().StandardCheckpointer().restore(needs("orbax"), target)

    on_device = jax.sharding.SingleDeviceSharding(device)
    pinned = jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")

    def eqx_msg_pinned() -> Any:
        with _eqx_msg().open(needs("eqx_msg")) as reader:
            staged = jax.device_put([reader[key] for key in reader], pinned)
        return dict(zip(names, jax.device_put(staged, on_device)))

    staged_once: list[Any] = []  # made by the warm-up run, outside the timed runs

    def pinned_to_device() -> Any:
        if not staged_once:
            staged_once.append(jax.block_until_ready(jax.device_put(arrays, pinned)))
        return jax.device_put(staged_once[0], on_device)

    def eqx_msg_threads() -> Any:
        from concurrent.futures import ThreadPoolExecutor

        with _eqx_msg().open(needs("eqx_msg")) as reader:
            views = [reader[key] for key in reader]
        groups = [views[k::THREADS] for k in range(THREADS)]
        with ThreadPoolExecutor(THREADS) as pool:
            placed = list(pool.map(lambda group: jax.device_put(group, device), groups))
        return [placed[i % THREADS][i // THREADS] for i in range(len(views))]

    def memmap_list() -> Any:
        whole = np.memmap(needs("raw"), np.float32, mode="r").reshape(len(arrays), *shape)
        return jax.device_put(list(whole), device)

    def memmap_one() -> Any:
        whole = np.memmap(needs("raw"), np.float32, mode="r")
        return jax.device_put(whole, device)

    one_verify = lambda result: check(list(result.reshape(len(arrays), *shape)), arrays, device)  # noqa: E731
    return [
        run(
            "eqx_msg.load(path, device=gpu)",
            lambda: _eqx_msg().load(needs("eqx_msg"), device=device),
            repeat,
            block,
            verify,
        ),
        run("safetensors.flax.load_file + jax.device_put", safetensors_flax, repeat, block, verify),
        run(
            'safetensors.torch.load_file(device="cuda") (torch tensors)',
            safetensors_torch,
            repeat,
            torch_sync,
            verify,
        ),
        run(
            "orbax StandardCheckpointer.restore onto the device",
            orbax_restore,
            repeat,
            block,
            verify,
        ),
        run(
            "experiment: eqx_msg views -> device_put to pinned_host -> device_put to the device",
            eqx_msg_pinned,
            repeat,
            block,
            verify,
        ),
        run(
            "ceiling: device_put of arrays already in pinned_host memory to the device",
            pinned_to_device,
            repeat,
            block,
            verify,
        ),
        run(
            f"experiment: eqx_msg views, device_put from {THREADS} threads at once",
            eqx_msg_threads,
            repeat,
            block,
            verify,
        ),
        run(
            f"jax.device_put(list of {len(arrays)} numpy arrays in memory, not mapped)",
            lambda: jax.device_put(arrays, device),
            repeat,
            block,
            verify,
        ),
        run(
            f"jax.device_put(list of {len(arrays)} np.memmap views of a raw file)",
            memmap_list,
            repeat,
            block,
            verify,
        ),
        run(
            "jax.device_put(one np.memmap array of all the bytes)",
            memmap_one,
            repeat,
            block,
            one_verify,
        ),
    ]


def small_rows(directory: str, device: Any, repeat: int) -> tuple[list[Row], int]:
    """10,000 small leaves: eqx_msg load against `jax.device_put(list)` of numpy arrays in memory."""
    rng = np.random.default_rng(1)
    arrays = [rng.random(SMALL_FLOATS, dtype=np.float32) for _ in range(SMALL_LEAVES)]
    verify = lambda result: check(result, arrays, device)  # noqa: E731
    path = os.path.join(directory, "small.eqx")
    try:
        _eqx_msg().save(path, [jax.device_put(a, device) for a in arrays])
        warm(path)
    except Exception as err:
        path = f"fails: save: {short(err)}"

    def eqx_msg_load() -> Any:
        if not os.path.exists(path):
            raise RuntimeError(path)
        return _eqx_msg().load(path, device=device)

    rows = [
        run("eqx_msg.load(path, device=gpu)", eqx_msg_load, repeat, block, verify),
        run(
            "jax.device_put(list of numpy arrays in memory)",
            lambda: jax.device_put(arrays, device),
            repeat,
            block,
            verify,
        ),
    ]
    return rows, sum(a.nbytes for a in arrays)


# ---- the report --------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    """A duration with a readable unit."""
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def table(rows: list[Row], nbytes: int) -> str:
    """A markdown table: median, GB/s, and time relative to eqx_msg's (the first row)."""
    mine = rows[0].seconds
    lines = ["| method | median | GB/s | time / eqx_msg's |", "|---|---|---|---|"]
    for row in rows:
        if row.seconds is None:
            lines.append(f"| {row.method} | {row.problem} | | |")
            continue
        ratio = f"{row.seconds / mine:.2f}x" if mine else "-"
        time_text = fmt_time(row.seconds) + (f" ({row.problem})" if row.problem else "")
        lines.append(f"| {row.method} | {time_text} | {nbytes / row.seconds / GB:.3g} | {ratio} |")
    return "\n".join(lines)


def targets(big: list[Row], nbytes: int, small: list[Row]) -> str:
    """Issue #3's two GPU targets, each with its verdict (rows[0] is eqx_msg's row)."""
    lines = []
    mine = big[0]
    if mine.seconds is None or mine.problem:
        lines.append(f"- big tree at >= 25 GB/s (stretch 40): no figure ({mine.problem})")
    else:
        rate = nbytes / mine.seconds / GB
        verdict = "PASS, stretch met" if rate >= 40 else "PASS" if rate >= 25 else "MISS"
        lines.append(f"- big tree at >= 25 GB/s (stretch 40): {rate:.3g} GB/s, {verdict}")
    mine, peer = small
    if mine.seconds is None or peer.seconds is None or mine.problem or peer.problem:
        lines.append("- small leaves >= 5x faster than jax.device_put(list): no figure")
    else:
        ratio = peer.seconds / mine.seconds
        verdict = "PASS" if ratio >= 5 else "MISS"
        lines.append(
            f"- small leaves >= 5x faster than jax.device_put(list): {ratio:.2f}x, {verdict}"
        )
    return "\n".join(lines)


def versions() -> str:
    """Versions of the libraries in play."""
    from importlib import metadata

    found = []
    for name in (
        "eqx_msg",
        "jax",
        "jaxlib",
        "numpy",
        "safetensors",
        "flax",
        "orbax-checkpoint",
        "torch",
    ):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print (and write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-gib", type=float, help="size of the big tree (default 4; 0.25 with --allow-cpu)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs after 1 warm-up (default 3)"
    )
    parser.add_argument("--out", help="directory to write gpu_load.md into (as well as stdout)")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (to test)"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if jax.default_backend() != "gpu" and not args.allow_cpu:
        print("no GPU: skipping")
        return 0
    size_gib = args.size_gib or (0.25 if jax.default_backend() != "gpu" else 4)
    device = jax.devices()[0]
    directory = tempfile.mkdtemp(prefix="eqx_msg_gpu_", dir="/tmp")
    try:
        names = [f"layer{i:02d}" for i in range(LEAVES)]
        arrays = make_arrays(int(size_gib * 2**30), LEAVES)
        nbytes = sum(a.nbytes for a in arrays)
        log(f"saving {nbytes / 2**30:.2f} GiB in {LEAVES} leaves")
        paths = save_all(directory, names, arrays, device)
        log("placing the big tree")
        big = big_rows(paths, names, arrays, device, args.repeat)
        log("placing the small leaves")
        small, small_nbytes = small_rows(directory, device, args.repeat)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    text = "\n".join([
        f"# Loading onto {device.device_kind} ({device.platform})",
        "",
        f"Command: `python benches/gpu_load.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"median of {args.repeat} after 1 warm-up, warm page cache.",
        f"Versions: Python {sys.version.split()[0]}, {versions()}.",
        "",
        f"## {nbytes / 2**30:.2f} GiB in {LEAVES} float32 leaves of {nbytes / LEAVES / 2**20:.0f} MiB",
        "",
        table(big, nbytes),
        "",
        f"## {SMALL_LEAVES:,} leaves of {SMALL_FLOATS} float32",
        "",
        table(small, small_nbytes),
        "",
        f"## Targets of issue #3 (they are set for a GPU; this ran on {device.platform})",
        "",
        targets(big, nbytes, small),
        "",
    ])  # fmt: skip
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_load.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
