"""The demo, the command line, and the proof that Rust alone reads a Python-written file."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_msg

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs():
    result = subprocess.run(
        [sys.executable, "-m", "eqx_msg", "demo"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "outputs match: True; tree structure matches: True" in result.stdout
    assert "['mlp'].layers[0].weight" in result.stdout and "bfloat16" in result.stdout


def test_inspect_command(tmp_path):
    path = tmp_path / "i.eqx"
    eqx_msg.save(path, {"w": jnp.ones((2, 3), jnp.float8_e4m3fn)})
    result = subprocess.run(
        [sys.executable, "-m", "eqx_msg", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "float8_e4m3fn" in result.stdout and "(2, 3)" in result.stdout
    path.write_bytes(b"garbage" * 10)
    result = subprocess.run(
        [sys.executable, "-m", "eqx_msg", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "MagicError" in result.stderr


def _print_header(path: pathlib.Path) -> subprocess.CompletedProcess:
    """Run the pure-Rust example that prints a file's header as JSON."""
    command = [
        "cargo",
        "run",
        "--quiet",
        "--release",
        "-p",
        "eqx_msg_core",
        "--example",
        "print_header",
    ]
    return subprocess.run(
        [*command, "--", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
def test_rust_example_prints_a_python_written_header(tmp_path):
    path = tmp_path / "rust.eqx"
    tree = {
        "layers": [{"w": np.ones((2, 3), np.float32)}],
        "key": jax.random.key(1),
        "i4": jnp.arange(3, dtype=jnp.int4),
    }
    eqx_msg.save(path, tree, metadata={"who": "python"})
    result = _print_header(path)
    assert result.returncode == 0, result.stderr
    header = json.loads(result.stdout)
    assert header["format"] == "eqx_msg" and header["metadata"] == {"who": "python"}
    paths = {leaf["path"]: leaf for leaf in header["leaves"]}
    assert paths["['layers'][0]['w']"]["shape"] == [2, 3]
    assert paths["['key']"]["key_impl"] == "threefry2x32"
    assert paths["['i4']"]["nbytes"] == 2
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(path.read_bytes()[:-1])
    result = _print_header(bad)
    assert result.returncode == 1 and "EqxMsg" not in result.stdout and result.stderr.strip()


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
def test_rust_core_benchmark_runs():
    command = ["cargo", "run", "--quiet", "--release", "-p", "eqx_msg_core", "--example"]
    result = subprocess.run(
        [*command, "bench_core", "--", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "## header decode + validate" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| assemble")]
    assert len(rows) == 2 and all(float(row.split("|")[2]) > 0 for row in rows)
