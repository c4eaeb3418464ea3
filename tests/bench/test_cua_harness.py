"""The cua peer harness against the real cua-computer-server (installed from PyPI, cached)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
import websockets  # noqa: F401  (the bench extra; CI installs all extras: fail, never skip)

from hivecell.bench.cua import CuaReport, default_workdir, measure_cua

# A fresh machine installs cua from PyPI first (the other test waits for it on the lock).
pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(1200)]

# The harness spawns these directly, so they are children of the test process while alive.
PEER_MARKERS = ("Xvfb", "openbox", "computer_server")


def peer_children() -> list[str]:
    """Command lines of our child processes that belong to a cua peer."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue  # not a pid, or exited while we looked
        if ppid == os.getpid() and any(marker in cmdline for marker in PEER_MARKERS):
            found.append(cmdline)
    return found


async def test_measures_every_operation_and_cleans_up() -> None:
    report = await measure_cua(runs=3, workdir=default_workdir())

    assert isinstance(report, CuaReport)
    assert report.version == "0.1.25"
    for name in ("screenshot", "click", "move", "exec_true", "type_text"):
        stats = getattr(report, name)
        assert stats.n == 3, name
        assert stats.median_ms > 0, name
    assert report.startup_ms > 0
    assert report.idle_rss_mb > 0
    assert peer_children() == []


async def test_cancellation_tears_the_peer_down() -> None:
    async def cancel_once_serving(scope: anyio.CancelScope) -> None:
        # Waits out a cold install too, then cancels mid-measurement.
        while True:
            if any("computer_server" in cmd for cmd in peer_children()):
                break
            await anyio.sleep(0.1)
        await anyio.sleep(2)
        scope.cancel()

    with anyio.fail_after(1100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_once_serving, tg.cancel_scope)
            await measure_cua(runs=10_000, workdir=default_workdir())
            pytest.fail("measure_cua finished 10k runs before being cancelled")

    assert peer_children() == []
