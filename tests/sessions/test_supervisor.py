"""The supervisor leaves nothing behind: stop and restart end the agent's whole session,
background jobs included."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.sessions.service import SessionCreate, SessionService
from hivecell.sessions.supervisor import session_members
from tests.sessions.helpers import make_repo, stop_all

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def shome(home: Path) -> Iterator[Path]:
    yield home
    stop_all(home)


async def _members_with(sid: int, count: int) -> list[int]:
    with anyio.fail_after(20):
        while True:  # the shell starts its jobs when it reads the line
            members = session_members(sid)
            if len(members) >= count:
                return members
            await anyio.sleep(0.05)


@pytest.mark.parametrize("action", ["restart", "destroy"])
async def test_background_jobs_end_with_the_agent(shome: Path, tmp_path: Path, action: str) -> None:
    service = SessionService(shome, {"PATH": os.environ["PATH"]})
    req = SessionCreate(
        name="bg1", agent="shell", repo=str(make_repo(tmp_path / "r")), isolation="none"
    )
    view = await service.create(req)
    assert view.pid is not None
    # Job control gives each job its own process group; they share the shell's session.
    await service.send("bg1", "sleep 300 & sleep 301 & trap '' HUP; echo x", enter=True)
    members = await _members_with(view.pid, 3)
    assert len({os.getpgid(p) for p in members}) >= 2
    if action == "restart":
        again = await service.restart("bg1")
        assert again.pid not in (None, view.pid)
        await service.destroy("bg1", force=False)
    else:
        await service.destroy("bg1", force=False)
    with anyio.fail_after(10):  # SIGKILL is delivered, not awaited: until none is left
        while True:
            if not session_members(view.pid):
                break
            await anyio.sleep(0.05)


async def test_a_viewer_that_stops_reading_pauses_the_output_then_is_dropped(
    shome: Path, tmp_path: Path
) -> None:
    """Output a viewer cannot take yet is held back, not lost (the agent waits, as on a slow
    terminal); a viewer that stopped reading altogether is dropped after VIEWER_STALL and
    the agent goes on. Every byte reaches the viewer that keeps reading."""
    from hivecell.sessions import framing
    from hivecell.sessions.framing import FrameType
    from hivecell.sessions.link import Link

    service = SessionService(shome, {"PATH": os.environ["PATH"]})
    req = SessionCreate(
        name="flood", agent="shell", repo=str(make_repo(tmp_path / "r")), isolation="none"
    )
    await service.create(req)
    folder = service.folder("flood")
    stalled = await anyio.connect_unix(str(folder / "sock"))  # attaches, never reads
    await stalled.send(framing.control({"op": "attach", "tail": 0}))
    reader = await Link.open(folder)
    await reader.send(framing.control({"op": "attach", "tail": 0}))
    size = 24 * 1024 * 1024
    await service.send(
        "flood", f"head -c {size} /dev/zero | tr '\\0' x; echo; echo END-$((6*7))", True
    )
    seen = bytearray()
    with anyio.fail_after(120):
        while b"END-42" not in seen[-4096:]:
            frame = await reader.receive()
            if frame.type is FrameType.STDOUT:
                seen += frame.payload
    assert seen.count(b"x") >= size  # nothing lost (the command's echo has none)
    with anyio.fail_after(10):  # the stalled one was let go: its socket reads EOF
        while True:
            try:
                await stalled.receive(1 << 20)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    await stalled.aclose()
    await reader.aclose()
    await service.destroy("flood", force=True)
