"""Auto-answer: routine confirmations accepted for the person, each one audited; never a
"[y/N]", never the same prompt twice, never more than the cap a minute. The answerer is
driven by hand (its settle timer stays out of the way) with real screens rendered by pyte;
the end-to-end test runs a real bash through the real server and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hivecell.sessions.audit import AuditLog
from hivecell.sessions.autoanswer import MAX_PER_MINUTE, AutoAnswerer
from hivecell.sessions.plugins import BUILTINS
from hivecell.sessions.recorders import SessionRecorder
from hivecell.sessions.status import ScreenWatch
from tests.server.helpers import serve
from tests.sessions.helpers import cli, make_repo, viewer
from tests.sessions.test_session_audit import until_entry


class Harness:
    def __init__(self, tmp_path: Path, agent: str = "shell") -> None:
        self.watch = ScreenWatch(80, 24, BUILTINS[agent].screen)
        self.recorder = SessionRecorder(tmp_path, "s1", agent, tmp_path, 1 << 20)
        self.typed: list[bytes] = []
        self.answerer = AutoAnswerer(self.watch, self.recorder, self.typed.append)
        self.folder = tmp_path

    def show(self, data: bytes) -> list[bytes]:
        """The agent writes ``data`` and then stays quiet: what gets typed."""
        before = len(self.typed)
        self.watch.feed(data)
        self.answerer._settled()
        return self.typed[before:]

    def entries(self) -> list[dict[str, Any]]:
        items = AuditLog(self.folder).read(after=0, limit=1000)
        return [e.model_dump() for e in items if e.action == "permission_change"]


def test_a_yes_no_question_is_answered_once_and_audited(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.show(b"$ ./install.sh\r\nProceed? [Y/n] ") == [b"y\r"]
    [entry] = h.entries()
    assert entry["target"] == "Proceed? [Y/n]"
    assert entry["detail"]["auto_answer"] is True and entry["detail"]["keys"] == "y\r"
    # Redrawn unchanged (the agent did not take the keys): not typed again.
    assert h.show(b"") == []
    # The next question, after the answer was echoed, is a new prompt.
    assert h.show(b"y\r\ninstalling\r\nProceed? [Y/n] ") == [b"y\r"]
    assert len(h.entries()) == 2


def test_a_question_defaulting_to_no_or_no_longer_at_the_cursor_is_left_alone(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    assert h.show(b"Delete everything? [y/N] ") == []
    assert h.show(b"n\r\n$ echo '(y/n)'\r\n(y/n)\r\n$ ") == []  # printed text, not a prompt
    assert h.entries() == []


def test_claude_codes_permission_menu_takes_enter(tmp_path: Path) -> None:
    h = Harness(tmp_path, "claude-code")
    menu = "Do you want to make this edit to app.py?\r\n\u276f 1. Yes\r\n  2. No\r\n"
    assert h.show(b"\x1b[2J\x1b[H" + menu.encode() + b"\x1b[3A") == [b"\r"]


def test_a_program_asking_forever_is_capped(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    typed = [h.show(f"again {i}? (y/n) ".encode()) for i in range(MAX_PER_MINUTE + 5)]
    assert sum(1 for t in typed if t) == MAX_PER_MINUTE
    blocked = [e for e in h.entries() if e["outcome"] == "blocked"]
    assert len(blocked) == 1 and "a minute" in blocked[0]["detail"]["reason"]


def test_agents_without_answers_or_sessions_without_the_switch_type_nothing(
    tmp_path: Path,
) -> None:
    from hivecell.sessions.supervisor import Supervisor

    spec = _spec(tmp_path, auto_answer=False)
    assert Supervisor(tmp_path, spec).auto is None
    assert Supervisor(tmp_path, _spec(tmp_path, auto_answer=True)).auto is not None


def _spec(folder: Path, *, auto_answer: bool) -> Any:
    from datetime import UTC, datetime

    from hivecell.sessions.spec import SessionSpec

    return SessionSpec(
        name="s1",
        agent="shell",
        argv=["bash"],
        cwd=str(folder),
        env={},
        isolation="none",
        repo=str(folder),
        screen=BUILTINS["shell"].screen,
        created_at=datetime.now(UTC),
        auto_answer=auto_answer,
    )


@pytest.mark.anyio
async def test_a_session_made_with_auto_answer_answers_its_shell(
    shome: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    async with serve(shome) as running:
        await cli(
            shome,
            running,
            "create",
            "yes1",
            "--agent",
            "shell",
            "--repo",
            str(repo),
            "--isolation",
            "none",
            "--auto-answer",
        )
        assert (await running.get("/sessions/yes1")).json()["auto_answer"] is True
        async with viewer(running, "yes1") as v:
            await v.type('read -p "Go on? [y/n] " a; echo "got-$a-$((1+1))"\r')
            await v.until(b"got-y-2")
            await v.type('for i in 1 2; do read -p "Again $i? (y/n) " a; echo "r$i=$a"; done\r')
            await v.until(b"r2=y")
        entries = await until_entry(
            running, "yes1", {"action": "permission_change", "target": "Again 2? (y/n)"}
        )
        auto = [e for e in entries if e["action"] == "permission_change"]
        assert [e["target"] for e in auto] == ["Go on? [y/n]", "Again 1? (y/n)", "Again 2? (y/n)"]
        # The keys typed for the person are not recorded as their input.
        assert not [e for e in entries if e["action"] == "input" and e["target"] == "y"]
        await cli(shome, running, "destroy", "yes1", "--force")
