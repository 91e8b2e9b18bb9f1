"""Measure what each entry point costs on hostile files and on benign files of the same size.

Run by tests/attacks/test_costs.py in a fresh process (so one attack's memory does not hide
another's): `python tests/attacks/measure.py NAME...` prints one JSON object per (file, entry point)
with the CPU seconds, the peak resident memory added (Linux's VmHWM, reset before each call through
/proc/self/clear_refs) and the outcome: "ok", "refused: <EqxMsgError subclass>" or "BAD: <anything
else>" (another exception, or more than `LIMIT_S` seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile  # noqa: E402

import eqx_msg  # noqa: E402

LIMIT_S = int(os.environ.get("EQX_MSG_MEASURE_LIMIT_S", "60"))


def _reader_everything(path: str) -> None:
    with eqx_msg.open(path) as reader:
        for step in (
            lambda: reader.header,
            lambda: reader.metadata,
            reader.keys,
            reader.specs,
            reader.abstract,
            lambda: reader["['no such key']"],
            lambda: reader.load(filter={"no such key": True}),
            reader.load,
        ):
            with contextlib.suppress(
                eqx_msg.EqxMsgError
            ):  # one refusal must not hide another's cost
                step()


ENTRY_POINTS: dict[str, Callable[[bytes, str], Any]] = {
    "loads": lambda data, path: eqx_msg.loads(data),
    "loads(as_numpy)": lambda data, path: eqx_msg.loads(data, as_numpy=True),
    "load": lambda data, path: eqx_msg.load(path),
    "load(sharding=saved)": lambda data, path: eqx_msg.load(path, sharding="saved"),
    "header": lambda data, path: eqx_msg.header(data),
    "Reader methods": lambda data, path: _reader_everything(path),
}


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError


def measure(data: bytes, path: str, entry: Callable[[bytes, str], Any]) -> dict[str, Any]:
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _kib("VmRSS")
    start = time.process_time()
    signal.alarm(LIMIT_S)
    try:
        entry(data, path)
        outcome = "ok"
    except eqx_msg.EqxMsgError as err:
        outcome = f"refused: {type(err).__name__}"
    except TimeoutError:
        outcome = f"BAD: more than {LIMIT_S} s"
    except BaseException as err:  # noqa: BLE001 - what the test is looking for
        outcome = f"BAD: {type(err).__name__}: {str(err)[:200]}"
    finally:
        signal.alarm(0)
    return {
        "cpu_s": time.process_time() - start,
        "peak_rss_added": max(0, _kib("VmHWM") - before) * 1024,
        "outcome": outcome,
    }


def main(names: list[str]) -> int:
    signal.signal(signal.SIGALRM, _timeout)
    eqx_msg.loads(hostile.benign(4096))  # warm up: imports, the registry, JAX's backend
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data = hostile.ATTACKS[name]()
            twin = hostile.benign(len(data))
            for label, blob in ((name, data), ("benign", twin)):
                path = os.path.join(tmp, "f.eqx")
                Path(path).write_bytes(blob)
                for entry_name, entry in ENTRY_POINTS.items():
                    row = {"attack": name, "file": label, "size": len(blob), "entry": entry_name}
                    print(json.dumps(row | measure(blob, path, entry)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
