"""``session.status`` on the events WebSocket: a real server, a real bash in a PTY, a prompt
that waits for the person, and the answer that ends the wait."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import websockets

from hivecell.server.events import EventHub
from hivecell.server.sessionwatch import SessionWatch
from hivecell.sessions.service import SessionService
from tests.server.helpers import TOKEN, events, serve
from tests.sessions.helpers import make_repo

pytestmark = [pytest.mark.anyio]


async def status_event(ws: Any, name: str, status: str, timeout: float = 30) -> dict[str, Any]:
    """Read events until ``session.status`` says ``name`` is ``status``; the ones before it
    must be well-formed too."""
    with anyio.fail_after(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] != "session.status":
                continue
            data = event["data"]
            assert set(data) == {"name", "agent", "status", "previous"}, data
            assert data["status"] != data["previous"], "only changes are published"
            if data["name"] == name and data["status"] == status:
                return dict(data)


async def test_waiting_and_its_end_arrive_on_the_events_socket(shome: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with serve(shome) as running, events(running) as ws:
        made = await running.post(
            "/sessions",
            json={"name": "ev1", "agent": "shell", "repo": str(repo), "isolation": "none"},
        )
        assert made.status_code == 201, made.text
        await running.post("/sessions/ev1/send", json={"text": "read -p 'go on? (y/n) ' x"})
        waiting = await status_event(ws, "ev1", "waiting")
        assert waiting["agent"] == "shell" and waiting["previous"] in (None, "working", "idle")
        await running.post("/sessions/ev1/send", json={"text": "y"})
        answered = await status_event(ws, "ev1", "idle")
        assert answered["previous"] in ("waiting", "working")
        await running.post("/sessions/ev1/send", json={"text": "exit 4"})
        exited = await status_event(ws, "ev1", "exited")
        assert exited["previous"] != "exited"


async def test_the_hello_lists_session_events(shome: Path) -> None:
    async with serve(shome) as running:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with websockets.connect(running.ws_url, additional_headers=headers) as ws:
            hello = json.loads(await ws.recv())
    assert {"session.created", "session.status", "session.destroyed"} <= set(hello["data"]["types"])


async def test_a_broken_session_folder_does_not_stop_the_watch(shome: Path, tmp_path: Path) -> None:
    """A folder that is not a session (no spec, or a spec that is a link) is skipped; the
    watch still reports the real session next to it."""
    repo = make_repo(tmp_path / "repo")
    service = SessionService(shome, {})
    hub = EventHub()
    watch = SessionWatch(service, hub)
    async with serve(shome) as running:
        made = await running.post(
            "/sessions",
            json={"name": "ok1", "agent": "shell", "repo": str(repo), "isolation": "none"},
        )
        assert made.status_code == 201, made.text
        (shome / "sessions" / "junk").mkdir()
        (shome / "sessions" / "linked").mkdir()
        (shome / "sessions" / "linked" / "spec.json").symlink_to("/etc/passwd")
        await watch.round()  # learns the states: nothing published yet
        assert watch.known is not None and set(watch.known) == {"ok1"}
        with hub.subscribe() as sub:
            await running.post("/sessions/ok1/send", json={"text": "exit 5"})
            with anyio.fail_after(30):
                while watch.known.get("ok1") != "exited":
                    await watch.round()
                    await anyio.sleep(0.1)
            event = sub.receive.receive_nowait()
            assert event["type"] == "session.status"
            assert event["data"]["name"] == "ok1" and event["data"]["status"] == "exited"
