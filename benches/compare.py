"""eqx_msg against its peers: every operation on every workload, with ratios to the physical limits.

    python benches/compare.py                  # full run (~1 GiB W1), writes benches/RESULTS.md
    python benches/compare.py --quick          # tiny workloads, < 60 s, writes a temp file
    python benches/compare.py --only W1 --repeat 3 --size-mib 256

Each cell is the median of --repeat runs after one warm-up (fewer for slow cells: see
_measure.runs_for). The warm-up's result is checked bit-exactly against the original tree (structure,
leaf kinds, dtypes, shapes, bytes, PRNG key data); a system that gets it wrong is reported as
`wrong result`, one that cannot do it as `n/a` or `fails`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
from _measure import (  # noqa: E402
    BUDGET,
    SLOW,
    Cell,
    abstract_problem,
    fresh,
    header_problem,
    host_leaves,
    leaf_problem,
    limits,
    paired,
    remove,
    runs_for,
    short,
    size_on_disk,
    timed,
    tree_problem,
)
from _systems import SYSTEMS, NotSupported, System, fsync_path, make  # noqa: E402
from _workloads import WORKLOADS, Sizes, Workload, build  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GB = 1e9

# (key, row label, limit it is compared with, whether GB/s is meaningful)
OPS: list[tuple[str, str, str | None, bool]] = [
    ("dumps", "dumps -> bytes", "memcpy to a new buffer", True),
    ("dumps_into", "dumps into a reused buffer", "memcpy", True),
    ("loads", "loads <- bytes", "memcpy to a new buffer", True),
    ("save", "save (no fsync)", "os.write", True),
    ("save_fsync", "save + fsync", "os.write+fsync", True),
    ("load_numpy", "load -> numpy", "readinto", True),
    ("load_jax", "load -> jax arrays", "readinto", True),
    ("open_one", "open + fetch one leaf", None, True),
    ("open_abstract", "open + abstract tree + one leaf", None, True),
    ("verify", "verify every byte (checksums)", "memcpy", True),
    ("header", "header only (keys, shapes)", None, False),
    ("size", "file size", None, False),
    ("rss_save", "peak RSS: save", None, False),
    ("rss_load", "peak RSS: load", None, False),
]

FIGURE_ROWS = {"size", "rss_save", "rss_load"}  # rows of sizes, not times
SAVE_RUNS = 3  # writes on a VM disk vary run to run: saves get at least this many timed runs


@dataclass
class Result:
    """Everything measured for one workload."""

    work_title: str
    nbytes: int
    leaves: int
    one_key: str
    one_nbytes: int
    limits: dict[str, float]
    note: str = ""
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # system -> op -> cell
    # eqx_msg load_jax against device_put(list), interleaved: (load s, device_put s, median ratio)
    paired: tuple[float, float, float] | None = None


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


# ---- running one system on one workload ----------------------------------------------------------


def save_cells(system: System, work: Workload, path: str, repeat: int) -> tuple[Cell, Cell]:
    """(save without fsync, save with fsync): eqx_msg times both calls; peers time save, then fsync."""
    if system.fsyncs:
        plain, _ = timed(
            lambda: system.save(work, path), repeat, setup=lambda: fresh(path), least=SAVE_RUNS
        )
        durable, _ = timed(
            lambda: system.save_durable(work, path),
            repeat,
            setup=lambda: fresh(path),
            least=SAVE_RUNS,
        )
        return plain, durable
    try:
        fresh(path)
        start = time.perf_counter()
        system.save(work, path)
        first_save = time.perf_counter() - start
        fsync_path(path)
        first = time.perf_counter() - start
    except NotSupported as err:
        return Cell(status="n/a", detail=str(err)), Cell(status="n/a", detail=str(err))
    except Exception as err:
        return Cell(status="fails", detail=short(err)), Cell(status="fails", detail=short(err))
    saves, totals = [], []
    for _ in range(runs_for(first, repeat, SAVE_RUNS)):
        fresh(path)
        gc.collect()
        start = time.perf_counter()
        system.save(work, path)
        saved = time.perf_counter()
        fsync_path(path)
        saves.append(saved - start)
        totals.append(time.perf_counter() - start)
    if not saves:
        return Cell(first_save, runs=0), Cell(first, runs=0)
    return Cell(statistics.median(saves), runs=len(saves)), Cell(
        statistics.median(totals), runs=len(saves)
    )


def file_cells(system: System, work: Workload, path: str, repeat: int) -> dict[str, Cell]:
    """The operations on a saved file: loads, one leaf, header only, size."""
    cells = {
        "load_numpy": timed(
            lambda: system.load_numpy(path, work),
            repeat,
            setup=system.cleanup,
            check=lambda t: tree_problem(work, t, "numpy"),
        )[0],
        "load_jax": timed(
            lambda: system.load_jax(path, work),
            repeat,
            setup=system.cleanup,
            block=True,
            check=lambda t: tree_problem(work, t, "jax"),
        )[0],
        "open_one": timed(
            lambda: system.open_one(path, work),
            repeat,
            check=lambda x: leaf_problem(work.one_leaf(), x, "any"),
        )[0],
        "open_abstract": timed(
            lambda: system.open_abstract_one(path, work),
            repeat,
            check=lambda x: (
                abstract_problem(work, x[0]) or leaf_problem(work.one_leaf(), x[1], "any")
            ),
        )[0],
        "header": timed(
            lambda: system.header_only(path, work), repeat, check=lambda h: header_problem(work, h)
        )[0],
        "verify": timed(lambda: system.verify(path, work), repeat)[0],
    }
    size = size_on_disk(path)
    cells["size"] = Cell(value=size, text=f"{size / 2**20:,.1f} MiB")
    return cells


def rss_cell(system: System, work: Workload, sizes: Sizes, op: str, path: str) -> Cell:
    """Peak RSS of one save or load, measured in a fresh interpreter (benches/_rss.py)."""
    command = [
        sys.executable, os.path.join(HERE, "_rss.py"), "--workload", work.name,
        "--sizes", json.dumps(dataclasses.asdict(sizes)), "--system", system.name, "--op", op,
        "--path", path,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as err:
        return Cell(status="fails", detail=short(err))
    if done.returncode:
        return Cell(status="fails", detail=(done.stderr.strip().splitlines() or ["?"])[-1][:90])
    peak, before = figures["peak"], figures["before"]
    flag = "" if figures["exact"] else " (lifetime peak)"
    return Cell(value=peak, text=f"{peak / 2**20:,.0f} MiB (+{(peak - before) / 2**20:,.0f}){flag}")


def bench_system(
    system: System, work: Workload, sizes: Sizes, directory: str, repeat: int, rss: bool
) -> dict[str, Cell]:
    """Every operation of one system on one workload."""
    path = os.path.join(directory, "ckpt" + system.suffix)
    same = "numpy" if work.numpy_leaves else "jax"
    cells: dict[str, Cell] = {}
    cells["dumps"], data = timed(lambda: system.dumps(work), repeat, keep_first=True)
    cells["dumps_into"], _ = timed(
        lambda: system.dumps_into(work),
        repeat,
        check=lambda written: None if written == data else "not the bytes of dumps",
    )
    system.cleanup()
    if data is None:
        cells["loads"] = dataclasses.replace(cells["dumps"], seconds=None)
    else:
        cells["loads"], _ = timed(
            lambda: system.loads(data, work),
            repeat,
            setup=system.cleanup,
            block=True,
            check=lambda t: tree_problem(work, t, same),
        )
    data = None  # free the bytes before the file operations
    cells["save"], cells["save_fsync"] = save_cells(system, work, path, repeat)
    saved = cells["save_fsync"].status in ("ok", "wrong") and os.path.exists(path)
    if saved:
        cells.update(file_cells(system, work, path, repeat))
    else:
        failed = Cell(
            status=cells["save"].status if cells["save"].status != "ok" else "fails",
            detail="no file: save failed",
        )
        cells.update(
            {
                op: failed
                for op in (
                    "load_numpy",
                    "load_jax",
                    "open_one",
                    "open_abstract",
                    "verify",
                    "header",
                    "size",
                )
            }
        )
    if rss and saved:
        cells["rss_load"] = rss_cell(system, work, sizes, "load", path)
        save_path = os.path.join(directory, "rss" + system.suffix)
        cells["rss_save"] = rss_cell(system, work, sizes, "save", save_path)
        remove(save_path)
    else:
        reason = "not measured (see --rss)" if not rss else "no file: save failed"
        cells["rss_load"] = cells["rss_save"] = Cell(
            status="n/a" if not rss else "fails", detail=reason
        )
    remove(path)
    system.cleanup()
    return cells


def bench_workload(
    work: Workload, systems: list[System], sizes: Sizes, repeat: int, rss: bool
) -> Result:
    """All systems on one workload, and its limits."""
    directory = tempfile.mkdtemp(prefix="eqx_msg_bench_", dir="/tmp")
    try:
        log(f"{work.name}: {work.nbytes / 2**20:,.1f} MiB in {len(work.leaves):,} leaves: limits")
        _ = work.abstract, work.numpy_skeleton, work.flat  # skeletons: outside every timing
        gc.collect()
        gc.freeze()  # the workload's objects are permanent: each run's gc.collect() skips them
        result = Result(
            work.title, work.nbytes, len(work.leaves), work.one_key, int(work.one_leaf().nbytes),
            limits(work, directory, repeat), work.note,
        )  # fmt: skip
        for system in systems:
            start = time.perf_counter()
            result.cells[system.name] = bench_system(system, work, sizes, directory, repeat, rss)
            log(f"{work.name}: {system.name} done in {time.perf_counter() - start:.1f} s")
        mine = next((s for s in systems if s.name == "eqx_msg"), None)
        if mine is not None and not work.numpy_leaves and len(work.leaves) >= 1000:
            result.paired = paired_with_device_put(mine, work, directory, max(repeat, 5))
        return result
    finally:
        gc.unfreeze()
        remove(directory)


def paired_with_device_put(
    system: System, work: Workload, directory: str, runs: int
) -> tuple[float, float, float]:
    """eqx_msg's load to jax and `jax.device_put` of the leaves as numpy, run alternately."""
    path = os.path.join(directory, "paired" + system.suffix)
    system.save(work, path)
    host = host_leaves(work)
    try:
        return paired(lambda: system.load_jax(path, work), lambda: jax.device_put(host), runs)
    finally:
        remove(path)
        system.cleanup()


# ---- formatting ----------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    """A duration with a unit that keeps 3 significant digits."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_cell(cell: Cell, op: str, nbytes: int, limit: float | None, repeat: int) -> str:
    """The markdown text of one cell."""
    if cell.status in ("n/a", "fails"):
        return f"{cell.status}: {cell.detail}".replace("|", "\\|")
    if cell.text is not None:
        text = cell.text
    elif cell.seconds is None:
        text = "?"
    else:
        parts = [fmt_time(cell.seconds)]
        if nbytes and op != "header":
            parts.append(f"{nbytes / cell.seconds / GB:.2f} GB/s")
        if limit:
            parts.append(f"{limit / cell.seconds:.2f}x")
        text = ", ".join(parts)
        if cell.runs == 0:
            text += " [1 run]"
        elif cell.runs is not None and cell.runs < repeat:
            text += f" [n={cell.runs}]"
    if cell.status == "wrong":
        return f"wrong result: {cell.detail} ({text})".replace("|", "\\|")
    return text


def cell_figure(cell: Cell) -> float | None:
    """The figure a cell is ranked by (lower is better), if it counts."""
    if not cell.usable:
        return None
    return cell.value if cell.text is not None else cell.seconds


def versus_best(cells: dict[str, Cell]) -> tuple[str, float | None, str | None]:
    """(text, ratio eqx_msg/best peer, best peer) for one row; ratio < 1 means eqx_msg is better."""
    mine = cell_figure(cells["eqx_msg"]) if "eqx_msg" in cells else None
    peers = {n: cell_figure(c) for n, c in cells.items() if n != "eqx_msg"}
    peers = {n: f for n, f in peers.items() if f is not None}
    if mine is None or not peers:
        return ("no peer" if mine is not None else "-"), None, None
    best = min(peers, key=lambda n: peers[n])
    ratio = mine / peers[best] if peers[best] > 0 else float("inf")
    return f"{ratio:.3g}x ({best})", ratio, best


def table(result: Result, names: list[str], repeat: int) -> str:
    """The markdown table of one workload."""
    lines = [
        "| operation | " + " | ".join(names) + " | eqx_msg / best peer |",
        "|---" * (len(names) + 2) + "|",
    ]
    for op, label, limit_name, gbps in OPS:
        row = {n: result.cells[n][op] for n in names}
        if all(c.status == "n/a" and c.detail.startswith("not measured") for c in row.values()):
            continue
        nbytes = (result.one_nbytes if op == "open_one" else result.nbytes) if gbps else 0
        limit = result.limits.get(limit_name) if limit_name else None
        texts = [fmt_cell(row[n], op, nbytes, limit, repeat) for n in names]
        lines.append(f"| {label} | " + " | ".join(texts) + f" | {versus_best(row)[0]} |")
    return "\n".join(lines)


def limits_line(result: Result) -> str:
    """The physical limits of one workload, in words."""
    parts = []
    for name, seconds in result.limits.items():
        rate = f" ({result.nbytes / seconds / GB:.2f} GB/s)" if name != "device_put(list)" else ""
        parts.append(f"{name} {fmt_time(seconds)}{rate}")
    line = "Limits, same process, same bytes: " + "; ".join(parts) + "."
    if result.paired:
        load, put, ratio = result.paired
        line += (
            f" Interleaved with device_put(list): eqx_msg load {fmt_time(load)}, device_put(list) "
            f"{fmt_time(put)}, median ratio {ratio:.2f}x."
        )
    return line


def rss_remark(result: Result) -> str:
    """A sentence saying the peak-RSS rows were left out, where they were."""
    cells = [c["rss_save"] for c in result.cells.values()]
    skipped = all(c.status == "n/a" and c.detail.startswith("not measured") for c in cells)
    return " Peak RSS rows: not measured for this workload (see `--rss`)." if skipped else ""


# ---- targets -------------------------------------------------------------------------------------


Target = tuple[str, str, bool | None]


def _seconds(results: dict[str, Result], work: str, *, system: str, op: str) -> float | None:
    """A usable cell's median seconds, or None."""
    result = results.get(work)
    cell = result.cells.get(system, {}).get(op) if result else None
    return cell.seconds if cell is not None and cell.usable else None


def _ratio_target(name: str, faster: float | None, slower: float | None, goal: float) -> Target:
    """A target that `faster` seconds beat `slower` seconds by at least `goal` times."""
    if not faster or not slower:
        return name, "not measured", None
    ratio = slower / faster
    return name, f"{ratio:.2f}x ({fmt_time(faster)} vs {fmt_time(slower)})", ratio >= goal


def _info(name: str, faster: float | None, slower: float | None) -> Target:
    """A ratio reported for information, with no pass or fail."""
    measured = _ratio_target(name, faster, slower, 0.0)[1]
    return name, measured, None


def _time_target(name: str, seconds: float | None, limit: float) -> Target:
    """A target that an operation takes at most `limit` seconds."""
    if seconds is None:
        return name, "not measured", None
    return name, fmt_time(seconds), seconds <= limit


def targets(results: dict[str, Result]) -> list[Target]:
    """(target, measured, passed) for each target of the issue; passed is None when not measured."""
    mine = functools.partial(_seconds, results, system="eqx_msg")
    w1, w2 = results.get("W1"), results.get("W2-jax")
    out = [
        _ratio_target(
            f"W1 eqx_msg {op} >= 0.8x {limit} (ratio = {limit} / {op})",
            mine("W1", op=op),
            w1.limits[limit] if w1 else None,
            0.8,
        )
        for op, limit in (
            ("dumps", "memcpy to a new buffer"),
            ("dumps_into", "memcpy"),
            ("loads", "memcpy to a new buffer"),
        )
    ]
    out += [
        _info(
            f"W1 eqx_msg {op} vs memcpy into a warm buffer (ratio = memcpy / {op}; a new buffer's "
            "first-touch page faults make 0.8x out of reach)",
            mine("W1", op=op),
            w1.limits["memcpy"] if w1 else None,
        )
        for op in ("dumps", "loads")
    ]
    out += [
        _time_target(
            f"W1 eqx_msg load to {kind} near-constant (<= 10 ms)", mine("W1", op=op), 0.010
        )
        for op, kind in (("load_numpy", "numpy"), ("load_jax", "jax"))
    ]
    out.append(
        _ratio_target(
            "W1 eqx_msg verify (page cache) >= 0.8x memcpy into a warm buffer (ratio = memcpy / "
            "verify)",
            mine("W1", op="verify"),
            w1.limits["memcpy"] if w1 else None,
            0.8,
        )
    )
    out.append(
        _ratio_target(
            "W1 open + one leaf faster than safetensors safe_open",
            mine("W1", op="open_one"),
            _seconds(results, "W1", system="safetensors", op="open_one"),
            1.0,
        )
    )
    out += [
        _time_target(f"W2 numpy leaves: eqx_msg {op} <= 50 ms", mine("W2-np", op=op), 0.050)
        for op in ("dumps", "loads")
    ]
    out += [
        _time_target(
            f"{work}: open + abstract() + fetch one leaf < 20 ms",
            mine(work, op="open_abstract"),
            0.020,
        )
        for work in ("W2-np", "W2-jax")
    ]
    out.append(
        _ratio_target(
            "W2 jax leaves: load >= 10x faster than eqx.tree_deserialise_leaves",
            mine("W2-jax", op="load_jax"),
            _seconds(results, "W2-jax", system="eqx serialise", op="load_jax"),
            10.0,
        )
    )
    out.append(_device_put_target(w2))
    out.append(_fastest_target(results))
    return out


def _device_put_target(w2: Result | None) -> Target:
    """The 10k-leaf placement target, from load and device_put(list) run in interleaved pairs."""
    name = "W2 10k leaves to jax >= 5x faster than jax.device_put(list of numpy)"
    if w2 is None or w2.paired is None:
        return name, "not measured", None
    load, put, ratio = w2.paired
    measured = f"{ratio:.2f}x (median of interleaved pairs: {fmt_time(load)} vs {fmt_time(put)})"
    return name, measured, ratio >= 5.0


def _fastest_target(results: dict[str, Result]) -> Target:
    """Whether eqx_msg is the fastest in every timed row that a correct peer also has."""
    losses, compared = [], 0
    for work, result in results.items():
        for op, label, _, _ in OPS:
            if op in FIGURE_ROWS:
                continue  # sizes, not speeds
            _, ratio, best = versus_best({n: c[op] for n, c in result.cells.items()})
            compared += ratio is not None
            if ratio is not None and ratio > 1:
                losses.append(f"{work} {label}: {best} {ratio:.2f}x faster")
    measured = "; ".join(losses) or f"fastest in all {compared} rows"
    name = "eqx_msg fastest in every timed row it shares with a peer"
    return name, measured, (not losses) if compared else None


def targets_section(results: dict[str, Result]) -> str:
    """The Targets section in markdown."""
    lines = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    for name, measured, passed in targets(results):
        verdict = (
            ("-" if measured == "not measured" else "info")
            if passed is None
            else ("PASS" if passed else "MISS")
        )
        lines.append(f"| {name} | {measured} | {verdict} |")
    return "\n".join(lines)


# ---- the report ----------------------------------------------------------------------------------


def machine() -> list[str]:
    """Machine facts and versions, as markdown bullet lines."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
        with open("/proc/meminfo") as f:
            ram = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 2**20
    except OSError:
        ram = float("nan")
    packages = [
        "eqx_msg",
        "jax",
        "jaxlib",
        "numpy",
        "equinox",
        "ml_dtypes",
        "msgpack",
        "safetensors",
        "flax",
        "orbax-checkpoint",
        "optax",
    ]
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return [
        f"- CPU: {cpu}; {os.cpu_count()} cores; {ram:.1f} GiB RAM; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; JAX backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"load average at the end {os.getloadavg()[0]:.2f} (the machine is shared: figures move with it)",
        "- " + ", ".join(versions),
    ]


def report(
    results: dict[str, Result],
    names: list[str],
    args: argparse.Namespace,
    command: str,
    elapsed: float,
) -> str:
    """The whole markdown report."""
    notes = [f"- **{cls.name}**: {cls.note}" for cls in SYSTEMS if cls.note and cls.name in names]
    parts = [
        "# eqx_msg vs peers",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min; median of {args.repeat} after 1 warm-up"
        + ("; --quick sizes: not the sizes the targets are about" if args.quick else "")
        + ")",
        "",
        *machine(),
        "",
        "Cells: median time, GB/s of the workload's array bytes, and the speed relative to the physical "
        "limit of the row's kind (one memcpy of the same bytes to a new buffer for dumps/loads, since "
        "both must fill fresh memory; memcpy into a warm buffer for dumps_into; os.write (+ fsync) for saves, readinto for "
        "loads from files; 1.00x = as fast as the limit, above 1 = less work than the limit, e.g. "
        "zero-copy). "
        "The last column is eqx_msg / the best correct peer, in time or size (below 1: eqx_msg is "
        "faster or smaller; 0.1x = ten times faster). Files are read from a warm page cache. "
        "`wrong result` means the loaded tree was not bit-exact (dtype, shape, "
        "bytes, PRNG key data, tree structure, leaf kind). Slow cells are timed fewer times to keep the "
        f"run short: `[n=k]` = median of k runs after the warm-up (a cell stops at ~{BUDGET:.0f} s), "
        f"`[1 run]` = the first run alone (it took over {SLOW:.0f} s).",
        "",
    ]
    for result in results.values():
        parts += [
            f"## {result.work_title}",
            "",
            f"{result.nbytes / 2**20:,.1f} MiB in {result.leaves:,} leaves; one leaf = `{result.one_key}` "
            f"({result.one_nbytes / 2**20:,.2f} MiB). {result.note}",
            "",
            table(result, names, args.repeat),
            "",
            limits_line(result) + rss_remark(result),
            "",
        ]
    parts += [targets_section(results), "", "## Notes", "", *notes, *NOTES, ""]
    return "\n".join(parts)


NOTES = [
    "- Peers' `save + fsync` is their save followed by an fsync of the file (every file and directory "
    "for orbax), timed together in the same run as the `save (no fsync)` figure. Before every timed "
    "save the old file is deleted and `os.sync()` flushes all dirty pages (outside the timing). Writes "
    "on a virtual disk (here ext4 mounted with `discard`) still vary 2x or more from run to run, so "
    "save rows within ~1.5x of each other are a tie; they get at least "
    f"{SAVE_RUNS} timed runs unless the first took over {SLOW:.0f} s.",
    "- `load -> numpy` of jax-leaf trees: eqx_msg loads with `as_numpy=True` (views into the map; "
    "typed PRNG keys stay keys); pickle and orbax give their saved kind and convert leaves with "
    "`np.asarray` (zero-copy on the CPU). `load -> jax`: formats that give numpy put the "
    "leaves on the device with one `jax.device_put` of the tree, inside the timing.",
    "- eqx_msg's load and one-leaf fetch return zero-copy views of a memory map: their pages are read "
    "when first touched, so the time is the cost of having the arrays, not of reading every byte.",
    "- `eqx.tree_deserialise_leaves` and orbax need a skeleton (shapes and dtypes) to load; building it "
    "is outside the timing. Formats without an index cannot fetch one leaf or list keys without a full "
    "load (`n/a`).",
    "- Peak RSS: a fresh interpreter per cell (benches/_rss.py); the kernel's high-water mark reset "
    "just before the operation, `(+N)` over the RSS before it. A save process holds the built tree; a "
    "load process holds only the skeleton. Pages of a memory map count once touched.",
    "- `device_put(list)` in the limits: `jax.device_put` of the list of all leaves as numpy arrays. "
    "For the 10k-leaf target it also runs alternately with eqx_msg's load to jax (at least 5 pairs, "
    "each back to back): this VM's speed drifts by 1.5x over minutes, so the target is the median "
    "of the per-pair ratios, not a ratio of medians taken minutes apart.",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads (whole run < 60 s)")
    parser.add_argument(
        "--size-mib", type=float, help="W1's size in MiB (default 1024; 4 with --quick)"
    )
    parser.add_argument(
        "--w4-mib",
        type=float,
        help="the model size W4's adam state is for (default min(W1, 256): scaled to keep the run < 15 min)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="timed runs per cell, after 1 warm-up (default 5; 1 with --quick)",
    )
    parser.add_argument(
        "--only", help="comma-separated workloads: " + ",".join(WORKLOADS) + " (W2 = both W2s)"
    )
    parser.add_argument("--systems", help="comma-separated system names (eqx_msg always included)")
    parser.add_argument(
        "--rss",
        help="workloads with peak-RSS rows (a fresh process per cell), comma-separated, or all/none (default: W1; none with --quick)",
    )
    parser.add_argument(
        "--out", help="markdown path (default benches/RESULTS.md; a temp file with --quick)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the report and write it."""
    args = parse(argv)
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.rss = args.rss or ("none" if args.quick else "W1")
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    command = shlex.join(
        [
            "python",
            os.path.relpath(os.path.abspath(__file__)),
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    wanted = [w.strip() for w in (args.only or ",".join(WORKLOADS)).split(",")]
    wanted = [w for item in wanted for w in (("W2-np", "W2-jax") if item == "W2" else (item,))]
    chosen = {s.strip() for s in (args.systems or "").split(",") if s.strip()}
    systems = [
        make(cls) for cls in SYSTEMS if not chosen or cls.name in chosen or cls.name == "eqx_msg"
    ]
    names = [s.name for s in systems]
    sizes = Sizes.of(args.quick, args.size_mib, args.w4_mib)
    results: dict[str, Result] = {}
    for name in wanted:
        work = build(name, sizes)
        if name == "W4" and sizes.w4_model_mib < sizes.w1_mib:
            work.note = (
                f"**Scaled**: the state of a {sizes.w4_model_mib:g} MiB model, not of W1's "
                f"{sizes.w1_mib:g} MiB one (whose state would be ~{2 * sizes.w1_mib / 1024:.0f} GiB), to keep "
                "the whole run under 15 minutes on 2 cores (`--w4-mib` to change)."
            )
        rss = args.rss == "all" or name in args.rss.split(",")
        results[name] = bench_workload(work, systems, sizes, args.repeat, rss)
        del work
    text = report(results, names, args, command, time.perf_counter() - start)
    print(text)
    out = args.out or (
        os.path.join(tempfile.gettempdir(), "eqx_msg_compare_quick.md")
        if args.quick
        else os.path.join(HERE, "RESULTS.md")
    )
    with open(out, "w") as f:
        f.write(text)
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
