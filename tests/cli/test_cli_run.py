"""``hivecell run`` as a subprocess against a ScriptedLLMServer in the test: real sandboxes,
real HTTP, real terminal I/O through pipes. Also ``hivecell tasks`` and ``trace export``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm.script import Failure, Reply, ScriptItem
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.store import TaskStore, default_database_url
from hivecell.trace import TraceReader
from tests.agent.helpers import (
    Request,
    act,
    call,
    finish,
    images,
    tool_results,
)
from tests.screens import bright_box

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WAIT = call("wait", seconds=0)
RESULT_KEYS = {"task_id", "status", "success", "summary", "artifacts", "steps", "trace_dir"}
# The test's own settings must not leak into the CLI under test.
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HIVECELL_"))}


def command(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hivecell.cli.main", *args, "--home", str(home)]


async def hivecell(
    home: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(120):
        return await anyio.run_process(command(home, *args), input=stdin, check=False, env=ENV)


def run_args(server: ScriptedLLMServer, task: str = "do the task") -> list[str]:
    return ["run", task, "--base-url", server.base_url, "--api-key", "x", "--model", "m"]


async def run_json(
    home: Path, server: ScriptedLLMServer, *args: str, stdin: bytes = b""
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    done = await hivecell(home, *run_args(server), *args, "--json", stdin=stdin)
    assert done.stdout, done.stderr.decode()
    return done, json.loads(done.stdout)


# --- acceptance 1: a task with a shell step and a GUI step -------------------------------------
def click_into_the_window(found: list[tuple[int, int, int, int]]) -> Any:
    """A model step that looks at the screenshot, clicks into the (white) xterm and types a
    command there."""

    def step(request: Request) -> Reply:
        box = bright_box(images(request)[-1]) or (0, 0, 1, 1)
        found.append(box)
        x, y = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        return act(
            call("mouse_click", x=x, y=y),
            call("keyboard_type", text="echo typed-in-xterm > /shared/outbox/gui.txt"),
            call("keyboard_key", keys="Return"),
            text="The terminal is open; I click into it and type.",
        )

    return step


async def test_run_does_shell_and_gui_work_and_delivers_files(home: Path, tmp_path: Path) -> None:
    given = tmp_path / "in.txt"
    await anyio.Path(given).write_text("numbers: 1 2 3\n")
    wait_for_gui_file = (
        "for i in $(seq 100); do [ -s /shared/outbox/gui.txt ] && break; sleep 0.05; done;"
        " cat /shared/outbox/gui.txt"
    )
    windows: list[tuple[int, int, int, int]] = []
    steps: list[ScriptItem] = [
        act(call("run_shell", command="cp /shared/inbox/in.txt /shared/outbox/from-shell.txt")),
        act(call("open_app", name="xterm")),
        click_into_the_window(windows),
        act(call("run_shell", command=wait_for_gui_file)),
        *finish("Copied the input and typed into xterm."),
    ]
    async with ScriptedLLMServer(steps) as server:
        done, result = await run_json(home, server, "--file", str(given))
    assert done.returncode == 0, done.stderr.decode()
    assert result.keys() >= RESULT_KEYS
    assert (result["status"], result["success"], result["steps"]) == ("completed", True, 5)
    assert result["summary"] == "Copied the input and typed into xterm."

    assert sorted(result["artifacts"]) == ["from-shell.txt", "gui.txt"]
    output = anyio.Path(result["output_dir"])
    assert await (output / "from-shell.txt").read_text() == "numbers: 1 2 3\n"
    assert await (output / "gui.txt").read_text() == "typed-in-xterm\n"
    assert tool_results(server.chat_requests[4])[-1]["stdout"] == "typed-in-xterm\n"

    [(left, top, right, bottom)] = windows
    assert right - left > 200 and bottom - top > 100, "the xterm window was not on screen"
    trace_dir, box = Path(result["trace_dir"]), (left, top, right, bottom)
    await anyio.to_thread.run_sync(lambda: assert_trace_complete(trace_dir, clicked_inside=box))


def assert_trace_complete(trace_dir: Path, *, clicked_inside: tuple[int, int, int, int]) -> None:
    reader = TraceReader(trace_dir)
    loaded = reader.load()
    assert not loaded.truncated
    steps = loaded.steps
    tools = [s.tool for s in steps if s.kind == "tool"]
    assert tools == [
        "run_shell",
        "open_app",
        "mouse_click",
        "keyboard_type",
        "keyboard_key",
        "run_shell",
    ]
    assert all(s.error is None for s in steps if s.kind == "tool")
    acting = {s.step for s in steps if s.kind == "tool"}
    observed = {s.step: s.screenshot for s in steps if s.kind == "observation"}
    assert set(observed) == {0} | acting == {0, 1, 2, 3, 4}
    assert all(name and reader.screenshot(name) for name in observed.values())
    assert {s.step for s in steps if s.kind == "llm" and s.tokens} == {1, 2, 3, 4, 5}
    click = next(s for s in steps if s.tool == "mouse_click")
    assert isinstance(click.result, dict)
    left, top, right, bottom = clicked_inside  # scale 1: screenshot px are screen px
    assert left < int(str(click.result["x"])) < right and top < int(str(click.result["y"])) < bottom
    assert steps[-1].kind == "transfer" and steps[-1].tool == "transfer.outbox"
    assert [s for s in steps if s.kind == "status"][-1].result == {
        "status": "completed",
        "summary": "Copied the input and typed into xterm.",
    }


# --- acceptance 2: asking the person ---------------------------------------------------------
async def test_choice_is_answered_from_stdin(home: Path) -> None:
    question = call("ask_user_choice", question="Which format?", options=["csv", "json", "xml"])
    async with ScriptedLLMServer([act(question), *finish()]) as server:
        done, result = await run_json(home, server, stdin=b"2\n")
    assert result["status"] == "completed", done.stderr.decode()
    assert tool_results(server.chat_requests[1]) == [{"answer": "json"}]
    shown = done.stderr.decode()
    assert "Which format?" in shown and "2) json" in shown
    assert interventions(result) == [("answer", {"answer": "json", "tool": "ask_user_choice"})]


def interventions(result: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """The trace's interventions: all by the person at this terminal."""
    steps = TraceReader(Path(result["trace_dir"])).load().steps
    records = [s for s in steps if s.kind == "intervention"]
    assert all(s.by is not None and s.by.kind == "cli" for s in records)
    return [(s.action, s.arguments) for s in records]


# --- acceptance 3: limits and failure ----------------------------------------------------------
LIMITS = {
    "max_steps": ([], act(WAIT), ["--max-steps", "3"], "max_steps_reached"),
    # The model would answer after 10 minutes: only a timeout cutting the call ends it sooner.
    "timeout": ([act(WAIT), Reply(text="hmm", delay_s=600)], None, ["--timeout", "3"], "timed_out"),
    "failed": (finish("The file was not there.", success=False), None, [], "failed"),
    "tokens": ([], act(WAIT), ["--max-tokens", "40"], "budget_exceeded"),  # 15 per call
}


@pytest.mark.parametrize("case", LIMITS)
async def test_a_task_that_does_not_succeed_exits_non_zero(home: Path, case: str) -> None:
    steps, default, args, status = LIMITS[case]
    async with ScriptedLLMServer(steps, default=default) as server:
        done, result = await run_json(home, server, *args)
    assert done.returncode == 1
    assert (result["status"], result["success"]) == (status, False)
    assert "completed" not in done.stdout.decode() + done.stderr.decode()
    if case == "max_steps":
        assert result["steps"] == 3 and len(server.chat_requests) == 3
    if case == "timeout":
        assert result["duration_s"] < 300  # not the model's 600 s: the call was cut
    if case == "tokens":
        assert len(server.chat_requests) == 3  # 45 tokens: over 40 after the third call


async def test_a_cost_budget_needs_the_models_price(home: Path) -> None:
    async with ScriptedLLMServer([], default=act(WAIT)) as server:
        refused = await hivecell(home, *run_args(server), "--max-cost", "0.04")
        assert refused.returncode == 2
        message = refused.stderr.decode()
        assert '[prices."m"]' in message and "config.toml" in message, message
        assert server.chat_requests == []  # refused before anything ran
        assert not (home / "sandboxes").exists() or not any((home / "sandboxes").iterdir())
        await anyio.Path(home / "config.toml").write_text(
            '[prices."m"]\ninput = 1000.0\noutput = 1000.0\n'  # $0.015 per scripted call
        )
        done, result = await run_json(home, server, "--max-cost", "0.04")
    assert (result["status"], result["success"]) == ("budget_exceeded", False), done.stderr
    assert len(server.chat_requests) == 3 and result["cost_usd"] == pytest.approx(0.045)


# --- acceptance 4: a flaky and a dead endpoint -----------------------------------------------
async def write_provider(home: Path, server: ScriptedLLMServer, max_retries: int) -> None:
    await anyio.Path(home / "config.toml").write_text(
        "[providers.test]\n"
        f'base_url = "{server.base_url}"\n'
        'model = "scripted-model"\n'
        f"max_retries = {max_retries}\n"
        "backoff_base_s = 0.001\n"
        "backoff_max_s = 0.01\n"
    )


async def test_rate_limits_and_server_errors_are_retried(home: Path) -> None:
    steps = [Failure(status=429), Failure(status=500), *finish("done despite hiccups")]
    async with ScriptedLLMServer(steps) as server:
        await write_provider(home, server, max_retries=3)
        done, result = await hivecell_json(home, "run", "t", "--provider", "test")
    assert (result["status"], result["success"]) == ("completed", True), done.stderr.decode()
    assert len(server.chat_requests) == 4  # 3 attempts for the first call, 1 completion check


async def test_a_dead_endpoint_pauses_the_task(home: Path) -> None:
    async with ScriptedLLMServer(default=Failure(status=503, message="overloaded")) as server:
        await write_provider(home, server, max_retries=2)
        done, result = await hivecell_json(home, "run", "t", "--provider", "test")
    assert done.returncode == 1
    assert (result["status"], result["success"]) == ("paused", False)
    assert "failed 3 times in a row" in result["summary"]
    assert "HTTP 503: overloaded" in result["summary"]
    assert done.stderr.decode().count("paused:") == 1
    async with TaskStore(default_database_url(home)) as store:
        record = await store.get(result["task_id"])
    assert record.status == "paused" and "HTTP 503" in (record.summary or "")


async def hivecell_json(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[bytes], Any]:
    done = await hivecell(home, *args, "--json")
    assert done.stdout, done.stderr.decode()
    return done, json.loads(done.stdout)


# --- acceptance 5: a killed run --------------------------------------------------------------
async def test_a_killed_run_is_interrupted_with_its_trace_intact(home: Path) -> None:
    thinking = anyio.Event()

    def slow(request: Request) -> Reply:
        thinking.set()  # step 1 is done and traced; the model is busy with step 2
        return Reply(text="thinking for a long time", delay_s=60)

    async with ScriptedLLMServer([act(WAIT), slow]) as server:
        process = await anyio.open_process(command(home, *run_args(server)), env=ENV)
        async with process:
            with anyio.fail_after(60):
                await thinking.wait()
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
    async with TaskStore(default_database_url(home)) as store:
        [record] = await store.list()
        assert record.status == "running"
        assert await store.mark_interrupted() == [record.id]
        record = await store.get(record.id)
    assert record.status == "interrupted" and "interrupted" in (record.error or "")
    await anyio.to_thread.run_sync(assert_trace_up_to_step_one, Path(str(record.trace_dir)))


def assert_trace_up_to_step_one(trace_dir: Path) -> None:
    """Everything before the model call that was cut short is on disk, readable."""
    reader = TraceReader(trace_dir)
    loaded = reader.load()
    assert not loaded.truncated
    kinds = [(s.step, s.kind.value) for s in loaded.steps]
    assert kinds == [(0, "observation"), (1, "llm"), (1, "tool"), (1, "observation")]
    shots = [s.screenshot for s in loaded.steps if s.kind == "observation"]
    assert all(name and reader.screenshot(name) for name in shots)


# --- acceptance 6: listing, showing and exporting --------------------------------------------
async def test_tasks_ls_show_and_trace_export(home: Path, tmp_path: Path) -> None:
    command_line = "echo report > /shared/outbox/report.txt"
    steps = [act(call("run_shell", command=command_line), text="writing it"), *finish("wrote it")]
    async with ScriptedLLMServer(steps) as server:
        _, result = await run_json(home, server)
    task_id = result["task_id"]
    outputs: dict[str, bytes] = {}

    async def capture(name: str, *args: str) -> None:
        done = await hivecell(home, *args)
        assert done.returncode == 0, done.stderr.decode()
        outputs[name] = done.stdout

    markdown = tmp_path / "export" / "trace.md"
    markdown.parent.mkdir()
    async with anyio.create_task_group() as tg:
        tg.start_soon(capture, "ls", "tasks", "ls", "--json")
        tg.start_soon(capture, "show", "tasks", "show", task_id)
        for fmt in ("json", "html"):
            tg.start_soon(capture, fmt, "trace", "export", task_id, "--format", fmt)
        md_args = ["trace", "export", task_id, "--format", "md", "-o", str(markdown)]
        tg.start_soon(capture, "md", *md_args)
        for fmt in ("zip", "mp4"):  # binary: written to -o, never the terminal
            target = str(markdown.parent / f"bundle.{fmt}")
            tg.start_soon(capture, fmt, "trace", "export", task_id, "--format", fmt, "-o", target)

    [listed] = json.loads(outputs["ls"])
    shown = json.loads(outputs["show"])
    for record in (listed, shown):
        assert record["id"] == task_id and record["status"] == "completed"
        assert record["summary"] == "wrote it" and record["artifacts"] == ["report.txt"]
        assert record["steps"] == 2 and record["trace_dir"] == result["trace_dir"]
    await anyio.to_thread.run_sync(assert_exports, outputs, markdown, command_line)


def assert_exports(outputs: dict[str, bytes], markdown: Path, command_line: str) -> None:
    exported = json.loads(outputs["json"])
    assert exported["format"] == "hivecell-trace"
    [tool] = [s for s in exported["steps"] if s["kind"] == "tool"]
    assert tool["tool"] == "run_shell" and tool["arguments"] == {"command": command_line}
    assert exported["screenshots"] and exported["conversation"][0]["role"] == "system"
    html = outputs["html"].decode()
    shots = [s for s in exported["steps"] if s["kind"] == "observation"]
    assert html.count('src="data:image/png;base64,') == len(shots) == 2
    assert "run_shell" in html and "echo report &gt; /shared/outbox/report.txt" in html
    text = markdown.read_text()
    assert "run_shell" in text and command_line in text
    for shot in {s["screenshot"] for s in shots}:
        assert f"](screenshots/{shot})" in text
        assert (markdown.parent / "screenshots" / shot).is_file()
    assert_binary_exports(markdown.parent, len(shots))


def assert_binary_exports(folder: Path, screenshots: int) -> None:
    import zipfile

    import av

    with zipfile.ZipFile(folder / "bundle.zip") as archive:
        assert archive.read("outputs/report.txt") == b"report\n"
        assert "trace.jsonl" in archive.namelist() and "trace.md" in archive.namelist()
    with av.open(str(folder / "bundle.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == screenshots


async def test_at_a_limit_a_person_at_the_terminal_is_asked_for_more(home: Path) -> None:
    # stdin is a terminal (a pty): reaching --max-steps asks instead of ending the task.
    primary, secondary = os.openpty()
    steps = [act(WAIT), *finish("done after one more step")]
    async with ScriptedLLMServer(steps) as server:
        args = [*run_args(server), "--max-steps", "1", "--json"]
        with anyio.fail_after(120):
            async with await anyio.open_process(
                command(home, *args), stdin=secondary, env=ENV
            ) as process:
                os.close(secondary)
                assert process.stderr is not None and process.stdout is not None
                shown = b""
                async for chunk in process.stderr:
                    shown += chunk
                    if b"max_steps_reached: [m]ore" in shown:
                        break
                os.write(primary, b"m\n")
                out = b"".join([chunk async for chunk in process.stdout])
                await process.wait()
    os.close(primary)
    result = json.loads(out)
    assert (result["status"], result["steps"]) == ("completed", 2), shown.decode()
    assert process.returncode == 0
    assert interventions(result) == [("resume", {"extra_steps": 1})]
