"""Every example of docs/pydantic.md and of the README's pydantic section runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


PAGES = {
    "docs/pydantic.md": (ROOT / "docs" / "pydantic.md").read_text(),
    "README: pydantic": _readme_section("pydantic"),
}


@pytest.mark.parametrize("page", list(PAGES))
def test_the_examples_run(page):
    blocks = _blocks(PAGES[page])
    assert blocks, f"{page} has no python examples"
    # In one fresh process, in order (later blocks use earlier names), as a reader runs them.
    result = subprocess.run(
        [sys.executable, "-c", "\n\n".join(blocks)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
