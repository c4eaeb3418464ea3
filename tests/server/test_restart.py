"""``hivecell up`` as a process: SIGKILL mid-task, restart, nothing lost and nothing left."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.abc import Process

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.bench import leaks
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import act, call
from tests.server.helpers import Running, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@asynccontextmanager
async def hivecell_up(home: Path, *extra: str) -> AsyncIterator[tuple[Process, Running]]:
    command = [
        sys.executable,
        "-m",
        "hivecell.cli.main",
        "up",
        "--home",
        str(home),
        "--port",
        "0",
        "--api-only",
        "--pool-size",
        "0",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HIVECELL_"))}
    async with await anyio.open_process(command, env=env) as process:
        try:
            link = await _read_link(process)
            base_url, _, token = link.partition("/?token=")
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
                yield process, Running(base_url, token, client)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()


async def _read_link(process: Process) -> str:
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(90):
        while b"\n" not in seen:
            seen += await process.stdout.receive()
    line = seen.decode().splitlines()[0]
    assert line.startswith("hivecell is up: "), line
    return line.removeprefix("hivecell is up: ")


def processes_under(home: Path) -> list[str]:
    """Processes naming ``home``, but the host's zygote (bench.leaks.zygote_servers says
    why it is nobody's leftover)."""
    table = leaks.processes()
    shared = leaks.zygote_servers(table)
    return [p.describe() for p in table.values() if str(home) in p.cmdline and p.pid not in shared]


async def test_sigkill_mid_task_then_restart_interrupts_and_cleans_up(
    home: Path, pycache: Path
) -> None:
    slow = act(call("wait", seconds=0), delay_s=0.2)
    async with ScriptedLLMServer([], default=slow) as llm:
        write_provider(home, llm.base_url)
        async with hivecell_up(home) as (process, running):
            response = await running.post("/tasks", json={"description": "work forever"})
            task_id = response.json()["id"]
            await running.wait_for(task_id, lambda t: t["steps"] >= 2)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        provider = LocalProvider(home, pycache=pycache)
        assert len(await provider.list()) == 1  # the killed server's sandbox is still there
        steps_before = len(await _trace_steps(home, task_id))
        async with hivecell_up(home) as (_, running):
            task = await running.task(task_id)
            assert task["status"] == "interrupted" and "exited" in task["error"]
            trace = (await running.get(f"/tasks/{task_id}/trace")).json()
            assert len(trace["steps"]) == steps_before >= 3
            assert (await running.get("/sandboxes")).json()["items"] == []
            recovered = (await running.get("/status")).json()["recovered"]
            assert recovered["interrupted"] == [task_id]
            assert len(recovered["sandboxes_removed"]) == 1
    assert await provider.list() == []
    assert processes_under(home) == []


async def _trace_steps(home: Path, task_id: str) -> list[str]:
    text = await anyio.Path(home / "traces" / task_id / "trace.jsonl").read_text()
    return [line for line in text.splitlines() if line.strip()]


async def test_no_auth_is_refused_off_loopback(home: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "hivecell.cli.main",
        "up",
        "--home",
        str(home),
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--no-auth",
    ]
    result = await anyio.run_process(command, check=False)
    assert result.returncode == 2
    assert b"--no-auth is only allowed on a loopback host" in result.stderr
