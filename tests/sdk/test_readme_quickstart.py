"""The README's SDK quick start, run verbatim: what it shows a new user must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"
MARKER = "<!-- quickstart -->"


def quickstart_code() -> str:
    """The first ```python block after the marker line."""
    text = README.read_text()
    assert MARKER in text, f"README.md lost its {MARKER} line"
    found = re.search(r"```python\n(.*?)```", text.split(MARKER, 1)[1], re.DOTALL)
    assert found, f"no ```python block after {MARKER} in README.md"
    return found.group(1)


def test_the_readme_quick_start_prints_what_it_promises(home: Path) -> None:
    env = {**os.environ, "HIVECELL_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", quickstart_code()],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # echo hi; three folders under /shared; the typed text back through the clipboard
    # (exec's stdout keeps its newline, so print adds a blank line after the first two)
    assert result.stdout == "hi\n\n3\n\nhello from hivecell ✓\n", result.stderr
    assert not list((home / "sandboxes").glob("*")), "leaving the block destroys the sandbox"
