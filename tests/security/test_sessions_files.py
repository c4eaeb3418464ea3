"""Sessions' files and sockets: private modes, no links followed, no server secrets in the
agent's environment."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.errors import HivecellError, InvalidParams
from hivecell.sessions.service import SessionCreate, SessionService
from tests.sessions.helpers import make_repo, stop_all

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def shome(home: Path) -> Iterator[Path]:
    yield home
    stop_all(home)


def _req(name: str, repo: Path) -> SessionCreate:
    return SessionCreate(name=name, agent="shell", repo=str(repo), isolation="none")


async def _scrollback_until(folder: Path, needle: bytes) -> bytes:
    with anyio.fail_after(20):
        while True:  # the shell prints when it prints
            data = await anyio.Path(folder / "scrollback.log").read_bytes()
            if needle in data:
                return data
            await anyio.sleep(0.05)


async def test_session_files_are_private(shome: Path, tmp_path: Path) -> None:
    service = SessionService(shome, {"PATH": os.environ["PATH"]})
    await service.create(_req("p1", make_repo(tmp_path / "r")))
    folder = shome / "sessions" / "p1"
    assert stat.S_IMODE((shome / "sessions").stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("sock", "spec.json", "scrollback.log", "supervisor.log"):
        st = os.lstat(folder / name)
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, name
    assert stat.S_ISSOCK(os.lstat(folder / "sock").st_mode)
    await service.destroy("p1", force=False)


async def test_server_secrets_do_not_reach_the_agent(shome: Path, tmp_path: Path) -> None:
    environ = {"PATH": os.environ["PATH"], "OPENAI_API_KEY": "sk-secret-do-not-pass"}
    service = SessionService(shome, environ | {"HIVECELL_TOKEN": "tok-secret-xyz"})
    await service.create(_req("e1", make_repo(tmp_path / "r")))
    await service.send("e1", "env; echo env-$((9*9))", enter=True)
    seen = await _scrollback_until(shome / "sessions" / "e1", b"env-81")
    assert b"HIVECELL_SESSION=e1" in seen
    assert b"sk-secret" not in seen and b"tok-secret" not in seen
    await service.destroy("e1", force=False)


async def test_a_socket_swapped_for_a_link_is_not_followed(shome: Path, tmp_path: Path) -> None:
    """Session a's socket replaced by a link to session b's: requests for a must not reach
    b's agent."""
    service = SessionService(shome, {"PATH": os.environ["PATH"]})
    repo = make_repo(tmp_path / "r")
    await service.create(_req("a", repo))
    await service.create(_req("b", repo))
    sock_a = shome / "sessions" / "a" / "sock"
    sock_a.unlink()
    sock_a.symlink_to(shome / "sessions" / "b" / "sock")
    view = await service.get("a")
    assert (view.status, view.supervisor) == ("exited", "gone")
    with pytest.raises(HivecellError, match="does not answer"):
        await service.send(
            "a", "echo via-link > /dev/null; touch " + str(tmp_path / "pwned"), enter=True
        )
    assert (await service.get("b")).supervisor == "running"
    assert not (tmp_path / "pwned").exists()
    assert b"via-link" not in (shome / "sessions" / "b" / "scrollback.log").read_bytes()


async def test_links_in_place_of_the_sessions_folder_or_spec_are_refused(
    shome: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (shome / "sessions").symlink_to(elsewhere)
    service = SessionService(shome, {"PATH": os.environ["PATH"]})
    with pytest.raises(InvalidParams, match="not a folder"):
        await service.create(_req("l1", make_repo(tmp_path / "r")))
    assert list(elsewhere.iterdir()) == []
    (shome / "sessions").unlink()
    (shome / "sessions" / "l2").mkdir(parents=True)
    (shome / "sessions" / "l2" / "spec.json").symlink_to(tmp_path / "r" / ".git" / "HEAD")
    with pytest.raises(InvalidParams, match="not a plain file"):
        await service.get("l2")
