"""Print a pip/uv constraints file pinning each runtime dependency to the lowest version
`pyproject.toml` allows (`name>=X` becomes `name==X`; jaxlib follows jax).

`.ci/run` installs the package with it into a fresh environment to test the oldest end of the ranges
we declare; the dev tools and peers then resolve to the newest versions compatible with those pins.

    python tools/lowest_constraints.py pyproject.toml > constraints.txt
    uv pip install -c constraints.txt -e ".[dev]"
"""

from __future__ import annotations

import re
import sys
import tomllib


def lowest_pins(pyproject: str) -> dict[str, str]:
    """`{distribution: lowest allowed version}` for the `[project] dependencies` of `pyproject`."""
    with open(pyproject, "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    pins = {}
    for requirement in dependencies:
        found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
        if found is None:
            raise SystemExit(f"{pyproject}: cannot find the lowest version of {requirement!r}")
        pins[found[1]] = found[2]
    if "jax" in pins:
        pins.setdefault("jaxlib", pins["jax"])  # jax pins its jaxlib exactly
    return pins


def main(argv: list[str]) -> int:
    (pyproject,) = argv or ["pyproject.toml"]
    for name, version in lowest_pins(pyproject).items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
