"""Helpers for the server's security tests: a real uvicorn on loopback with any ServerConfig,
a raw HTTP client for requests a library would not send, and a loopback listener that
records what reaches it. Imported explicitly (no conftest.py magic)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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

__all__ = ["TOKEN", "Recorder", "Server", "recorder", "serve_config"]


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
    defaults: dict[str, Any] = {"database_url": default_database_url(home), "environ": {}}
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
