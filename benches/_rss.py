"""Child process for compare.py: the peak RSS of one save or load in a fresh interpreter.

Prints one JSON line: RSS before the operation and the peak during it (bytes). The peak is the kernel's
high-water mark (VmHWM), reset just before the operation through /proc/self/clear_refs; where that is
refused, the lifetime peak (ru_maxrss) is reported instead and flagged. Pages of a memory map count
in RSS once they are touched, as do the page-cache pages a process maps.
"""

from __future__ import annotations

import argparse
import json
import resource
import warnings

import _systems
import _workloads
import jax


def _status(field: str) -> int:
    """A `Vm*` figure of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    """Build what the operation needs, then measure it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True)
    parser.add_argument("--sizes", required=True, help="JSON of _workloads.Sizes")
    parser.add_argument("--system", required=True)
    parser.add_argument("--op", choices=("save", "load"), required=True)
    parser.add_argument("--path", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sizes = _workloads.Sizes(**json.loads(args.sizes))
    work = _workloads.build(args.workload, sizes, abstract=args.op == "load")
    system = _systems.make(args.system)
    if args.op == "load":
        _ = (
            work.abstract,
            work.numpy_skeleton,
            work.flat,
        )  # skeletons are built outside, as when timing
    before = _status("VmRSS")
    exact = _reset_peak()
    if args.op == "save":
        system.save(work, args.path)
    else:
        load = system.load_numpy if work.numpy_leaves else system.load_jax
        jax.block_until_ready(load(args.path, work))
    peak = _status("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak, "exact": exact}))


if __name__ == "__main__":
    main()
