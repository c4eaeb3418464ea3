"""A real hivecell server for tests: uvicorn on a free loopback port, in this event loop.

Everything is real: the app with its lifespan and task group, sandboxes on a short home, the
scripted model server over HTTP, httpx2 and websockets clients.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
import websockets

from hivecell.server.app import create_app
from hivecell.server.settings import ServerConfig
from hivecell.store import default_database_url

TOKEN = "test-token-0123456789"


@dataclass
class Running:
    base_url: str
    token: str | None
    client: httpx2.AsyncClient  # carries the bearer token

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/api/v1/events"

    async def post(self, path: str, **kwargs: Any) -> httpx2.Response:
        return await self.client.post("/api/v1" + path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx2.Response:
        return await self.client.get("/api/v1" + path, **kwargs)

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_for(
        self, task_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        """Poll the task until ``check`` holds (the REST view, as a dashboard would see it)."""
        with anyio.fail_after(timeout):
            while True:  # polling on purpose: this is what a REST client can do
                task = await self.task(task_id)
                if check(task):
                    return task
                await anyio.sleep(0.05)


def write_provider(home: Path, base_url: str, name: str = "scripted") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'default_provider = "{name}"\n\n[providers.{name}]\nbase_url = "{base_url}"\n'
        'model = "scripted-model"\napi_key = "sk-test-secret-key-1234"\nmax_retries = 0\n'
    )


@asynccontextmanager
async def serve(
    home: Path,
    *,
    token: str | None = TOKEN,
    max_concurrent: int | None = None,
    pool_size: int = 0,
    ui: bool = False,
    **config: Any,
) -> AsyncIterator[Running]:
    """A real server on loopback; no warm pool unless a test asks (``pool_size``), so
    sandbox counts and the machine's load stay what each test expects."""
    config = ServerConfig(
        home=home,
        database_url=default_database_url(home),
        environ={},
        token=token,
        max_concurrent=max_concurrent,
        pool_size=pool_size,
        ui=ui,  # by default the API alone: the dashboard has its own browser tests
        **config,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    sock = socket.create_server(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(20):
            while True:  # uvicorn offers no event for "listening"
                if server.started:
                    break
                await anyio.sleep(0.02)
        async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
            try:
                yield Running(base_url, token, client)
            finally:
                server.should_exit = True


@asynccontextmanager
async def events(running: Running) -> AsyncIterator[Any]:
    headers = {"Authorization": f"Bearer {running.token}"}
    async with websockets.connect(running.ws_url, additional_headers=headers) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        yield ws


async def next_event(ws: Any, kind: str, task_id: str | None = None, timeout: float = 60) -> Any:
    """Read events until one of ``kind`` (for ``task_id``) arrives; returns it."""
    with anyio.fail_after(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind and task_id in (None, event["data"].get("task_id")):
                return event
