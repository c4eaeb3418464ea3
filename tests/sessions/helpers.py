"""Shared pieces of the session tests: a git repository, the CLI as a process, attach
viewers over the real WebSocket, and cleanup of every supervisor a test started."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import websockets

from hivecell.sessions import framing
from hivecell.sessions.framing import FrameType
from hivecell.sessions.service import SessionService
from tests.server.helpers import Running
from tests.sessions.cleanup import stop_sessions


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": str(path)}
    env["PATH"] = os.environ["PATH"]
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)
    return path


async def cli(home: Path, running: Running, *args: str, check: bool = True) -> Any:
    """``hivecell session ...`` as a process against the test's server."""
    command = [sys.executable, "-m", "hivecell.cli.main", "session", *args]
    command += ["--home", str(home), "--server", running.base_url]
    done = await anyio.run_process(command, check=False)
    if check:
        assert done.returncode == 0, done.stderr.decode()
    return done


def stop_all(home: Path) -> None:
    """Kill every supervisor and agent under ``home`` (a failed test must not leave them)."""
    stop_sessions(home)


class Viewer:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen = b""
        self.controls: list[dict[str, Any]] = []

    async def type(self, text: str) -> None:
        await self.ws.send(framing.encode(FrameType.STDIN, text.encode()))

    async def until(self, needle: bytes, timeout: float = 20) -> bytes:
        with anyio.fail_after(timeout):
            while needle not in self.seen:
                frame = framing.decode(await self.ws.recv())
                if frame.type is FrameType.STDOUT:
                    self.seen += frame.payload
                elif frame.type is FrameType.CONTROL:
                    self.controls.append(frame.control())
        return self.seen


@contextlib.asynccontextmanager
async def viewer(running: Running, name: str, query: str = "") -> AsyncIterator[Viewer]:
    url = running.base_url.replace("http://", "ws://") + f"/api/v1/sessions/{name}/attach"
    headers = {"Authorization": f"Bearer {running.token}"}
    async with websockets.connect(url + query, additional_headers=headers) as ws:
        yield Viewer(ws)


async def wait_status(
    service: SessionService, name: str, wanted: str, timeout: float = 20
) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:  # polling on purpose: status is what `session ls` shows when asked
            view = await service.get(name)
            if view.status == wanted:
                return view.model_dump()
            await anyio.sleep(0.1)
