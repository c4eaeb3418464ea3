"""``session.status`` on the events WebSocket: a real server, a real bash in a PTY, a prompt
that waits for the person, and the answer that ends the wait."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import websockets

from hivecell.server.events import EventHub
from hivecell.server.sessionwatch import SessionWatch
from hivecell.sessions.audit import arecord
from hivecell.sessions.service import SessionService
from hivecell.sessions.spec import SessionSpec, write_private
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
    types = set(hello["data"]["types"])
    assert {"session.created", "session.status", "session.audit", "session.destroyed"} <= types


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


async def test_a_grown_audit_log_is_published_once(shome: Path) -> None:
    """``session.audit`` follows the audit log: one event for a round in which it grew (by
    the supervisor or by anyone else recording), none for a round in which it did not. (A
    session folder with no supervisor: nothing else writes to its log meanwhile.)"""
    folder = shome / "sessions" / "au1"
    folder.mkdir(parents=True, mode=0o700)
    spec = SessionSpec(
        name="au1", agent="shell", argv=["true"], cwd=str(shome), env={}, isolation="none",
        repo=str(shome), created_at=datetime.now(UTC),
    )  # fmt: skip
    write_private(folder / "spec.json", spec.model_dump_json())
    hub = EventHub()
    watch = SessionWatch(SessionService(shome, {}), hub)
    await arecord(folder, "session_start", session="au1", agent="shell")
    await watch.round()  # learns the states and the log's size: nothing published
    with hub.subscribe() as sub:
        await watch.round()
        with pytest.raises(anyio.WouldBlock):
            sub.receive.receive_nowait()
        await arecord(folder, "file_read", session="au1", agent="shell", target="x")
        await watch.round()
        event = sub.receive.receive_nowait()
        assert (event["type"], event["data"]) == ("session.audit", {"name": "au1"})
        await watch.round()
        with pytest.raises(anyio.WouldBlock):
            sub.receive.receive_nowait()


async def test_a_typed_line_reaches_the_events_socket_as_session_audit(
    shome: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    async with serve(shome) as running, events(running) as ws:
        made = await running.post(
            "/sessions",
            json={"name": "au2", "agent": "shell", "repo": str(repo), "isolation": "none"},
        )
        assert made.status_code == 201, made.text
        await running.post("/sessions/au2/send", json={"text": "echo audited-$((2+3))"})
        with anyio.fail_after(30):
            while True:  # each event sends the reader for the entries it announces
                event = json.loads(await ws.recv())
                if event["type"] != "session.audit":
                    continue
                assert event["data"] == {"name": "au2"}
                page = (await running.get("/sessions/au2/audit")).json()
                typed = [e["target"] for e in page["items"] if e["action"] == "input"]
                if typed == ["echo audited-$((2+3))"]:
                    break
