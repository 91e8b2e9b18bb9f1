"""Every cost a file can make loading pay is bounded by its size (docs/SECURITY.md, "Limits").

`measure.py` runs every entry point (loads, load, load(sharding="saved"), header, and every Reader
method) on each hostile file of `hostile.ATTACKS` and on a benign file of the same size, in one fresh
process. The bound, per entry point: CPU at most 10x the benign file's plus 0.25 s, and peak resident
memory added at most 10x the file's size plus 64 MiB. Before the fixes these files cost 1.5-30 s of
CPU or 1-15 GB (see the notes on issue 12); each must also end in success or an `EqxMsgError`.
"""

import json
import subprocess
import sys
from pathlib import Path

import hostile
import pytest

HERE = Path(__file__).resolve().parent
CPU_FACTOR, CPU_SLACK_S = 10, 0.25
RSS_FACTOR, RSS_SLACK = 10, 64 << 20


@pytest.fixture(scope="module")
def costs() -> dict[tuple[str, str, str], dict]:
    run = subprocess.run(
        [sys.executable, str(HERE / "measure.py"), *hostile.ATTACKS],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {
        (r["attack"], r["file"] == "benign" and "benign" or "hostile", r["entry"]): r for r in rows
    }


@pytest.mark.parametrize("attack", list(hostile.ATTACKS))
def test_a_hostile_file_costs_what_its_size_allows_and_fails_cleanly(attack, costs):
    entries = sorted({entry for (name, _, entry) in costs if name == attack})
    assert entries, f"no measurements for {attack}"
    for entry in entries:
        bad, good = costs[(attack, "hostile", entry)], costs[(attack, "benign", entry)]
        where = f"{attack} / {entry}"
        assert not bad["outcome"].startswith("BAD"), f"{where}: {bad['outcome']}"
        assert good["outcome"] == "ok", f"{where}: the benign twin {good['outcome']}"
        cpu_bound = CPU_FACTOR * good["cpu_s"] + CPU_SLACK_S
        assert bad["cpu_s"] <= cpu_bound, f"{where}: {bad['cpu_s']:.2f} s CPU > {cpu_bound:.2f} s"
        rss_bound = RSS_FACTOR * bad["size"] + RSS_SLACK
        assert bad["peak_rss_added"] <= rss_bound, (
            f"{where}: +{bad['peak_rss_added'] >> 20} MiB > {rss_bound >> 20} MiB"
        )
