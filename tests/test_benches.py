"""The benchmark harnesses run end to end at quick sizes and report what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("W1", "W2-np", "W2-jax", "W3", "W4")


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a benches/ script as a user would: from the repo root, without the tests' XLA flags."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The markdown of one quick comparison run (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("bench") / "quick.md"
    done = run_script(
        "benches/compare.py", "--quick", "--repeat", "1", "--out", str(out), timeout=400
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out.read_text()


def tables(report: str) -> dict[str, list[list[str]]]:
    """Each workload's table rows (header row first), split into cells, by workload name."""
    found: dict[str, list[list[str]]] = {}
    current = None
    for line in report.splitlines():
        if line.startswith("## "):
            current = line[3:].split(":")[0]
        elif current and line.startswith("| ") and not line.startswith("|---"):
            found.setdefault(current, []).append(
                [c.strip() for c in line.strip().strip("|").split(" | ")]
            )
    return found


def test_every_workload_has_a_table(quick_report: str) -> None:
    found = tables(quick_report)
    for name in WORKLOADS:
        assert name in found, f"no table for {name}"
        header, *rows = found[name]
        assert header[:2] == ["operation", "eqx_msg"]
        labels = [row[0] for row in rows]
        assert {
            "dumps -> bytes",
            "load -> jax arrays",
            "open + fetch one leaf",
            "verify every byte (checksums)",
            "file size",
        } <= set(labels)


def test_eqx_msg_never_fails_or_is_wrong(quick_report: str) -> None:
    for name in WORKLOADS:
        header, *rows = tables(quick_report)[name]
        column = header.index("eqx_msg")
        for row in rows:
            cell = row[column]
            assert not cell.startswith(("fails", "wrong result")), f"{name} / {row[0]}: {cell}"


def test_targets_section_is_present(quick_report: str) -> None:
    assert "## Targets" in quick_report
    section = quick_report.split("## Targets", 1)[1].split("## ", 1)[0]
    assert "W2 jax leaves: load >= 10x faster" in section
    assert "W1 eqx_msg verify (page cache) >= 0.8x memcpy" in section
    assert "PASS" in section or "MISS" in section


def test_rss_child_reports_a_peak(tmp_path: Path) -> None:
    sizes = {"w1_mib": 1, "w2_groups": 1, "w2_per_group": 10, "w3_rows": 8, "w4_model_mib": 1}
    args = ["--workload", "W1", "--sizes", json.dumps(sizes), "--system", "eqx_msg"]
    path = str(tmp_path / "model.eqx")
    for op in ("save", "load"):
        done = run_script("benches/_rss.py", *args, "--op", op, "--path", path, timeout=120)
        assert done.returncode == 0, done.stderr[-4000:]
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        assert figures["peak"] >= figures["before"] > 0


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="this checks the no-GPU path")
def test_gpu_load_skips_without_a_gpu() -> None:
    done = run_script("benches/gpu_load.py", timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "no GPU: skipping" in done.stdout


def test_gpu_load_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    """The one-shot GPU run must not die of a script bug: every row of eqx_msg's is timed and right."""
    done = run_script(
        "benches/gpu_load.py", "--allow-cpu", "--size-gib", "0.02", "--repeat", "1",
        "--out", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = (tmp_path / "gpu_load.md").read_text()
    assert report.strip() in done.stdout  # the table is printed and written alike
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    mine = [row for row in rows if "eqx_msg" in row.split("|")[1]]
    assert len(mine) == 4, mine  # the big tree, two experiments, the small leaves
    for row in mine:
        cell = row.split("|")[2]
        assert cell.strip().endswith("ms") or cell.strip().endswith(" s"), row
    assert "wrong result" not in report
    assert "big tree at >= 25 GB/s (stretch 40): " in report
    assert "small leaves >= 5x faster than jax.device_put(list): " in report
    assert "no figure" not in report
