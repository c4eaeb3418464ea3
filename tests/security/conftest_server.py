"""Helpers for the server's security tests: a real uvicorn on loopback with any ServerConfig,
a raw HTTP client for requests a library would not send, and a loopback listener that
records what reaches it. Imported explicitly (no conftest.py magic)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import uvicorn

from hivecell.server.app import create_app
from hivecell.server.settings import ServerConfig
from hivecell.store import default_database_url
from tests.server.helpers import TOKEN

__all__ = ["TOKEN", "Recorder", "Server", "UpProcess", "hivecell_up", "recorder", "serve_config"]


@dataclass
class Server:
    base_url: str
    port: int
    token: str | None

    @property
    def origin(self) -> str:
        return self.base_url

    @property
    def ws_base(self) -> str:
        return self.base_url.replace("http://", "ws://")

    def client(self, **kwargs: Any) -> httpx2.AsyncClient:
        """A browser-like client: the token rides in the cookie, not a bearer header."""
        cookies = {"hivecell_token": self.token} if self.token else {}
        return httpx2.AsyncClient(base_url=self.base_url, cookies=cookies, timeout=30, **kwargs)


@asynccontextmanager
async def serve_config(
    home: Path, *, token: str | None = TOKEN, **config: Any
) -> AsyncIterator[Server]:
    """``create_app`` under a real uvicorn on 127.0.0.1:<free port>; ``config`` overrides
    ServerConfig fields (allowed_hosts, ui, max_json_bytes, ...)."""
    defaults: dict[str, Any] = {
        "database_url": default_database_url(home),
        "environ": {},
        "pool_size": 0,  # no warm sandboxes unless a test asks
    }
    settings = ServerConfig(home=home, token=token, **(defaults | {"ui": False} | config))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(20):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await anyio.sleep(0.02)
        try:
            yield Server(f"http://127.0.0.1:{port}", port, token)
        finally:
            server.should_exit = True


@dataclass
class Recorder:
    """A loopback HTTP listener that answers 401 to everything and keeps every request head."""

    url: str
    heads: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def recorder() -> AsyncIterator[Recorder]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    seen = Recorder(f"http://127.0.0.1:{port}/v1")

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    head += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            seen.heads.append(head)
            body = b'{"error": {"message": "no", "type": "invalid_request_error"}}'
            await stream.send(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield seen
        finally:
            tg.cancel_scope.cancel()


@dataclass
class UpProcess:
    """A real ``hivecell up`` process and what it printed."""

    process: subprocess.Popen[str]
    base_url: str
    token: str | None

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def wait_started(self) -> None:
        """The link is printed before start-up: the first answer comes once it is done (the
        socket already listens, so this request waits in the backlog until then)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = httpx2.get(self.base_url + "/api/v1/status", headers=headers, timeout=120)
        assert response.status_code == 200, response.text

    def status(self, field: str) -> int:
        """A ``VmRSS``/``VmHWM`` line of /proc/<pid>/status, in KiB."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))  # type: ignore[union-attr]


@contextmanager
def hivecell_up(home: Path, *args: str) -> Iterator[UpProcess]:
    """``hivecell up --port 0 --home HOME ARGS`` until it prints its link; SIGINT afterwards."""
    env = os.environ | {"NO_COLOR": "1", "COLUMNS": "400"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hivecell.cli.main", "up", "--port", "0", "--home", str(home),
         "--pool-size", "0", *args],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        pattern = re.compile(r"hivecell is up: (http://[^/\s]+)/(?:\?token=(\S+))?")
        while not (match := pattern.search(line := process.stdout.readline())):
            # readline blocks until the server prints its link (or dies: an empty line)
            assert line, f"hivecell up exited ({process.wait()}) before printing its link"
        up = UpProcess(process, match.group(1), match.group(2))
        up.wait_started()
        yield up
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
