"""``hivecell crew`` as a subprocess: real desktops, the model scripted on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.local.provider import LocalProvider
from tests.cli.test_cli_run import hivecell
from tests.crew.model import CrewModel, done, failed, plan_reply, shell

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SHEETS = "/shared/crew/acme.txt /shared/crew/globex.txt"


def crew_args(server: ScriptedLLMServer, *more: str) -> list[str]:
    model = ["--base-url", server.base_url, "--api-key", "x", "--model", "m"]
    return ["crew", "research two vendors", "--agents", "2", *model, *more]


async def test_a_crew_from_the_terminal_prints_its_result_as_json(
    home: Path, pycache: Path, tmp_path: Path
) -> None:
    brief = tmp_path / "vendors.txt"
    await anyio.Path(brief).write_text("acme\nglobex\n")
    model = CrewModel(
        plans=[
            plan_reply(
                {"id": "acme", "title": "look at acme"},
                {"id": "globex", "title": "look at globex"},
                {"id": "sheet", "title": "compare", "depends_on": ["acme", "globex"]},
            )
        ],
        todos={
            "acme": [
                shell("grep acme /shared/inbox/vendors.txt > /shared/crew/acme.txt"),
                done("acme ok"),
            ],
            "globex": [
                shell("grep globex /shared/inbox/vendors.txt > /shared/crew/globex.txt"),
                done("globex ok"),
            ],
            "sheet": [
                shell(
                    "cat /shared/crew/acme.txt /shared/crew/globex.txt > /shared/outbox/sheet.csv"
                ),
                done("sheet written"),
            ],
        },
        summary="a comparison sheet of acme and globex",
    )
    async with ScriptedLLMServer(default=model) as server:
        finished = await hivecell(home, *crew_args(server, "--file", str(brief), "--json"))
    assert finished.returncode == 0, finished.stderr.decode()
    result = json.loads(finished.stdout)
    assert result["status"] == "completed"
    assert result["summary"] == "a comparison sheet of acme and globex"
    assert [(t["id"], t["status"]) for t in result["todos"]] == [
        ("acme", "done"), ("globex", "done"), ("sheet", "done")
    ]  # fmt: skip
    assert sorted(a["name"] for a in result["agents"]) == ["ada", "bo"]
    sheet_todo = next(t for t in result["todos"] if t["id"] == "sheet")
    sheet = Path(result["outputs_dir"]) / sheet_todo["agent"] / "sheet" / "sheet.csv"
    assert sheet.read_text() == "acme\nglobex\n"
    progress = finished.stderr.decode()
    assert "plan:" in progress and "takes sheet (compare)" in progress
    assert await LocalProvider(home, pycache=pycache).list() == []


async def test_a_crew_with_a_failed_todo_exits_1_and_says_partially_completed(
    home: Path,
) -> None:
    model = CrewModel(
        plans=[plan_reply({"id": "a", "title": "a"}, {"id": "b", "title": "b"})],
        todos={"a": [done("fine")], "b": [failed("no access")]},
    )
    async with ScriptedLLMServer(default=model) as server:
        finished = await hivecell(home, *crew_args(server))
    assert finished.returncode == 1
    shown = finished.stdout.decode()
    assert "partially_completed" in shown and "failed    b: b" in shown


async def test_bad_input_is_refused_before_anything_runs(home: Path, tmp_path: Path) -> None:
    async with ScriptedLLMServer() as server:
        missing = await hivecell(home, *crew_args(server, "--file", str(tmp_path / "nope")))
        too_many = await hivecell(home, *crew_args(server, "--agents", "9"))
    assert missing.returncode == 2 and "no such file" in _plain(missing.stderr)
    assert too_many.returncode == 2 and "--agents" in _plain(too_many.stderr)
    assert server.chat_requests == []


def _plain(stderr: bytes) -> str:
    """Typer's error box without its frame and line breaks."""
    text = stderr.decode()
    return " ".join("".join(c for c in text if c not in "│╭╮╰╯─").split())
