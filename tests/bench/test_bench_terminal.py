"""`hivecell bench terminal` end to end through the CLI: a real `hivecell up`, real session
supervisors, PTYs and a sandboxed shell. Checks the report's shape and that it measured
something, never that a goal is met (timings on a shared host are noise), and that nothing the
run started is left running."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivecell.bench import terminal

HIVECELL = [sys.executable, "-m", "hivecell.cli.main", "bench", "terminal"]


def _processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (this test's own home)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(path) in cmdline and state != b"Z":
            found.append(cmdline)
    return found


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_json_report_has_every_measure_and_nothing_is_left(home: Path) -> None:
    done = subprocess.run(
        [*HIVECELL, "--json", "--runs", "1", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert set(result) == {"terminal"}
    terminal = result["terminal"]
    echo, create, throughput = terminal["echo"], terminal["create"], terminal["throughput"]
    for value in (echo["median_ms"], echo["p90_ms"], terminal["throughput_mb_s"]):
        assert _positive(value)
    assert _positive(create["median_ms"])
    assert echo["p90_ms"] >= echo["median_ms"] >= echo["min_ms"] > 0
    assert echo["keystrokes"] == 200 and create["runs"] == 1
    assert create["first_ms"] == create["median_ms"]  # one run: the first is the median
    assert throughput["bytes"] > 0 and _positive(throughput["seconds"])
    assert isinstance(throughput["complete"], bool)
    assert set(terminal["met"]) == {"echo", "throughput", "create"}
    assert all(isinstance(met, bool) for met in terminal["met"].values())
    # Everything it made is gone: sessions, their boxes, the repository, the server.
    (workdir,) = (home / "bench").iterdir()
    assert not list((workdir / "sessions").iterdir())
    assert not list((workdir / "sandboxes").iterdir())
    assert not (workdir / "bench-repo").exists()
    assert _processes_naming(home) == []


def test_runs_below_one_is_refused_before_anything_starts(home: Path) -> None:
    wide = {**os.environ, "COLUMNS": "200"}  # the message on one line of its box
    done = subprocess.run(
        [*HIVECELL, "--runs", "0", "--home", str(home)], capture_output=True, text=True, env=wide
    )
    assert done.returncode == 2
    assert "Invalid value for '--runs'" in done.stderr, done.stderr
    assert "greater than or equal to 1" in done.stderr
    assert not (home / "bench").exists()


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_failure_midway_reports_it_and_leaves_nothing(
    short_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The echo session is up and attached when the run fails: the error that ended it is
    the one reported, and the session, its supervisor and the server are gone anyway."""

    async def broken(term: terminal._Term) -> terminal.Throughput:
        raise terminal.BenchTerminalError("planted", op="bench_terminal")

    monkeypatch.setattr(terminal, "_throughput", broken)
    with pytest.raises(terminal.BenchTerminalError, match="planted"):
        await terminal.measure_terminal(short_home, runs=1, keystrokes=3)
    assert not list((short_home / "sessions").iterdir())
    assert not (short_home / "bench-repo").exists()
    assert _processes_naming(short_home) == []
