"""The suite leans on xdist groups (one VM boot at a time on one worker, one desktop shared
by a module's tests). An upgrade that silently stops grouping must fail here, not as flakes
and a slower suite elsewhere: pytest 9.2 did (pytest-dev/pytest-xdist#1386)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GROUPED = """
import os, time, pytest
pytestmark = [pytest.mark.xdist_group("together")]

@pytest.mark.parametrize("i", range(8))
def test_grouped(i):
    time.sleep(0.05)
    out = os.environ["RECORD"]
    with open(out, "a") as fh:
        fh.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""
LOOSE = """
import time, pytest

@pytest.mark.parametrize("i", range(8))
def test_loose(i):
    time.sleep(0.05)
"""


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_loose.py").write_text(LOOSE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    record = tmp_path / "workers.txt"
    argv = [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup"]
    argv += ["-p", "no:cacheprovider", str(tmp_path)]
    env = {"PATH": "/usr/bin:/bin", "RECORD": str(record)}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    workers = record.read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, workers
