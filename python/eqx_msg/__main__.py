"""Command line: `python -m eqx_msg demo`, `... inspect FILE` and `... schema`."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Run the eqx_msg command line."""
    parser = argparse.ArgumentParser(prog="python -m eqx_msg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="save and reload a small Equinox model, then print its tree")
    inspect = commands.add_parser(
        "inspect", help="print a file's key paths, dtypes, shapes and sizes"
    )
    inspect.add_argument("file")
    commands.add_parser("schema", help="print the header's JSON schema (docs/header.schema.json)")
    args = parser.parse_args(argv)
    from . import EqxMsgError

    try:
        if args.command == "schema":
            return schema()
        return demo() if args.command == "demo" else inspect_file(args.file)
    except EqxMsgError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def demo() -> int:
    """Build a small model, save it, load it back, check outputs match and print the table."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import eqx_msg

    key = jax.random.key(0)
    model: dict[str, Any] = {
        "mlp": eqx.nn.MLP(8, 4, width_size=32, depth=2, activation=jax.nn.gelu, key=key),
        "norm": eqx.nn.LayerNorm(4),
        "embed_bf16": jnp.ones((16, 8), jnp.bfloat16),
        "rng": jax.random.split(key, 2),
        "step": 1000,
    }
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "demo.eqx")
        start = time.perf_counter()
        eqx_msg.save(path, model, metadata={"epoch": 3, "note": "demo"})
        saved = time.perf_counter() - start
        start = time.perf_counter()
        loaded = eqx_msg.load(path)
        took = time.perf_counter() - start
        x = jnp.linspace(-1.0, 1.0, 8)
        expected = model["norm"](model["mlp"](x))
        got = loaded["norm"](loaded["mlp"](x))
        same = bool(jnp.array_equal(expected, got))
        same_tree = jax.tree.structure(model) == jax.tree.structure(loaded)  # type: ignore[operator]
        print(
            f"saved {path} ({os.path.getsize(path)} bytes) in {saved * 1e3:.1f} ms; "
            f"loaded in {took * 1e3:.1f} ms"
        )
        print(f"outputs match: {same}; tree structure matches: {same_tree}")
        print(f"metadata: {eqx_msg.header(path).metadata}")
        inspect_file(path)
    if not (same and same_tree):
        print("demo FAILED", file=sys.stderr)
        return 1
    del np
    return 0


def schema() -> int:
    """Print the JSON schema of the header, as published in docs/header.schema.json."""
    import json

    from . import Header

    print(json.dumps(Header.model_json_schema(), indent=2, sort_keys=True))
    return 0


def inspect_file(path: str) -> int:
    """Print the header of `path` as a table of key paths, kinds, dtypes, shapes and sizes."""
    import eqx_msg

    header = eqx_msg.header(path)
    rows = [("key path", "kind", "dtype", "shape", "bytes")]
    for leaf in header.leaves:
        rows.append(
            (
                leaf.path or "(root)",
                leaf.kind + (f":{leaf.key_impl}" if leaf.key_impl else ""),
                leaf.dtype,
                str(tuple(leaf.shape)),
                _size(leaf.nbytes),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    total = sum(leaf.nbytes or 0 for leaf in header.leaves)
    print(
        f"{len(header.leaves)} leaves, {_size(total)} of data, format v{header.version}, "
        f"alignment {header.alignment}, written by {header.writer}"
    )
    return 0


def _size(nbytes: Any) -> str:
    if nbytes is None:
        return "-"
    if nbytes < 1024:
        return f"{nbytes} B"
    unit = min(int(math.log(nbytes, 1024)), 3)
    return f"{nbytes / 1024**unit:.1f} {['B', 'KiB', 'MiB', 'GiB'][unit]}"


if __name__ == "__main__":
    sys.exit(main())
