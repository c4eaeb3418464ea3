"""``hivecell mcp`` over stdio, driven by the ``mcp`` SDK's own client: real sandboxes, a
real desktop (xev records what the input tools did), real files, real tasks."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from mcp.types import BlobResourceContents, TextResourceContents
from PIL import Image

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.store import TaskStore, default_database_url
from tests.agent.helpers import act, call, finish, tool_results
from tests.mcp.helpers import failed, image_of, ok, poll_task, stdio_client, text_of
from tests.server.helpers import write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOOLS = {
    "sandbox_create",
    "sandbox_list",
    "sandbox_remove",
    "sandbox_screenshot",
    "sandbox_click",
    "sandbox_type",
    "sandbox_key",
    "sandbox_scroll",
    "sandbox_exec",
    "sandbox_read_file",
    "sandbox_write_file",
    "task_run",
    "task_status",
    "task_answer",
    "task_cancel",
}
READ_ONLY = {"sandbox_list", "sandbox_screenshot", "sandbox_read_file", "task_status"}
DESTRUCTIVE = {"sandbox_remove", "sandbox_exec", "sandbox_write_file", "task_cancel"}
# xev in a window at a known place records every click, key and wheel notch it receives.
XEV = (
    "(stdbuf -oL xev -geometry 400x300+100+100 -event keyboard -event button"
    " > /shared/xev.log 2>&1 &);"
    " for i in $(seq 200); do xdotool search --name 'Event Tester' && exit 0; sleep 0.05; done;"
    " exit 1"
)


async def xev_log_once(client: Client, sid: str, done: Callable[[str], bool]) -> str:
    """xev's log once `done` holds: the tools return when the X server has the input,
    xev writes it a moment later (on a loaded host, after the next read)."""
    with anyio.fail_after(30):
        while True:
            log = await ok(client, "sandbox_read_file", id=sid, path="/shared/xev.log")
            if done(log["content"]):
                return str(log["content"])
            await anyio.sleep(0.1)


async def test_tools_are_listed_with_their_contract_names_and_hints(home: Path) -> None:
    async with stdio_client(home) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        templates = (await client.list_resource_templates()).resource_templates
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert tool.annotations is not None, name
        assert tool.annotations.read_only_hint is (name in READ_ONLY), name
        assert tool.annotations.destructive_hint is (name in DESTRUCTIVE), name
    assert set(tools["sandbox_exec"].input_schema["required"]) == {"id", "command"}
    assert {t.uri_template for t in templates} == {
        "hivecell://sandboxes/{id}/screenshot",
        "hivecell://tasks/{id}/trace",
        "hivecell://tasks/{id}/artifacts",
        "hivecell://tasks/{id}/artifacts/{+name}",
    }


async def test_a_client_creates_sees_acts_on_and_removes_a_desktop(home: Path) -> None:
    async with stdio_client(home) as client:
        box = await ok(client, "sandbox_create", resolution=[1024, 768])
        sid = box["id"]
        assert (box["width"], box["height"], box["session"], box["keep"]) == (
            1024,
            768,
            True,
            False,
        )
        listed = await ok(client, "sandbox_list")
        assert [b["id"] for b in listed["items"] if b["session"]] == [sid]

        full = image_of(await client.call_tool("sandbox_screenshot", {"id": sid}))
        assert full.size == (1024, 768)
        [shot] = (await client.read_resource(f"hivecell://sandboxes/{sid}/screenshot")).contents
        assert isinstance(shot, BlobResourceContents) and shot.mime_type == "image/png"
        assert Image.open(io.BytesIO(base64.b64decode(shot.blob))).size == (1024, 768)
        half = image_of(await client.call_tool("sandbox_screenshot", {"id": sid, "scale": 0.5}))
        assert half.size == (512, 384)

        # A string runs in /bin/sh; a list is argv, its shell characters stay literal.
        shell = await ok(
            client, "sandbox_exec", id=sid, command="echo $((6*7)); echo e >&2; exit 3"
        )
        assert (shell["stdout"], shell["stderr"], shell["exit_code"]) == ("42\n", "e\n", 3)
        argv = await ok(client, "sandbox_exec", id=sid, command=["printf", "%s", "a; echo $HOME"])
        assert (argv["stdout"], argv["exit_code"]) == ("a; echo $HOME", 0)

        # Files: text and binary, written by the client and read back (and seen by the box).
        written = await ok(
            client, "sandbox_write_file", id=sid, path="/shared/a.txt", content="hé\n"
        )
        assert written["size"] == len("hé\n".encode())
        cat = await ok(client, "sandbox_exec", id=sid, command=["cat", "/shared/a.txt"])
        assert cat["stdout"] == "hé\n"
        blob = bytes(range(256))
        encoded = base64.b64encode(blob).decode()
        await ok(
            client,
            "sandbox_write_file",
            id=sid,
            path="/shared/b.bin",
            content=encoded,
            encoding="base64",
        )
        read = await ok(client, "sandbox_read_file", id=sid, path="/shared/b.bin", binary=True)
        assert (read["encoding"], base64.b64decode(read["content"])) == ("base64", blob)
        text = await ok(client, "sandbox_read_file", id=sid, path="/shared/a.txt")
        assert (text["encoding"], text["content"]) == ("text", "hé\n")

        # Input reaches the desktop: xev's window logs the click, keys and wheel notches.
        assert (await ok(client, "sandbox_exec", id=sid, command=XEV))["exit_code"] == 0
        await ok(client, "sandbox_click", id=sid, x=300, y=250)
        await ok(client, "sandbox_type", id=sid, text="hi")
        await ok(client, "sandbox_key", id=sid, keys="Return")
        await ok(client, "sandbox_scroll", id=sid, x=300, y=250, dy=2)
        log = await xev_log_once(client, sid, lambda text: text.count("ButtonPress event") >= 3)
        assert "button 1," in log
        for keysym in ("(keysym 0x68, h)", "(keysym 0x69, i)", "(keysym 0xff0d, Return)"):
            assert keysym in log
        assert log.count("ButtonPress event") == 3  # the click and two wheel notches down
        assert log.count("button 5,") >= 2

        denied = await failed(client, "sandbox_read_file", id=sid, path="/etc/passwd")
        assert text_of(denied).startswith("[path_denied]")
        assert await ok(client, "sandbox_remove", id=sid) == {"id": sid, "removed": True}
        assert await LocalProvider(home).list() == []
        gone = await failed(client, "sandbox_screenshot", id=sid)
        assert text_of(gone).startswith("[sandbox_not_found]")


async def test_errors_are_tool_errors_with_the_hivecell_code_and_the_server_keeps_serving(
    home: Path,
) -> None:
    async with stdio_client(home) as client:
        for tool, args in (
            ("sandbox_exec", {"id": "sb-nosuch", "command": "true"}),
            ("sandbox_remove", {"id": "sb-nosuch"}),
            ("sandbox_screenshot", {"id": "sb-nosuch"}),
        ):
            result = await failed(client, tool, **args)
            assert text_of(result).startswith("[sandbox_not_found]"), tool
            assert result.structured_content is not None
            assert result.structured_content["error"] == "sandbox_not_found"
            assert result.structured_content["context"] == {"id": "sb-nosuch"}
        # Arguments the schema forbids never reach hivecell: a path-like id, a negative x.
        for args in ({"id": "../../etc", "x": 1, "y": 1}, {"id": "sb-1", "x": -1, "y": 1}):
            assert "validation error" in text_of(await failed(client, "sandbox_click", **args))
        # No model configured (config.toml, environment): the error names what to set.
        unset = await failed(client, "task_run", description="anything")
        assert text_of(unset).startswith("[config_error]"), text_of(unset)
        for path in ("relative.txt", "/no/such/file", "/etc"):
            refused = await failed(client, "task_run", description="x", files=[path])
            assert text_of(refused).startswith("[invalid_params] task_run: files:"), path
        bad = await failed(client, "task_status", id="no-such-task")
        assert text_of(bad).startswith("[task_not_found]")
        answer = await failed(client, "task_answer", id="no-such-task", answer="x")
        assert answer.structured_content is not None
        assert answer.structured_content["error"] == "task_not_found"
        # Still serving, and nothing was left behind by the failures.
        assert (await ok(client, "sandbox_list"))["items"] == []


async def test_a_disconnected_client_leaves_no_sandbox_behind_unless_it_kept_one(
    home: Path,
) -> None:
    async with stdio_client(home) as client:
        gone = (await ok(client, "sandbox_create"))["id"]
        kept = (await ok(client, "sandbox_create", keep=True))["id"]
        assert {b["id"] for b in (await ok(client, "sandbox_list"))["items"]} == {gone, kept}
    # The client closed the server's stdin (and killed it soon after): only the kept box stays.
    await sandboxes_become(home, [kept])
    async with stdio_client(home) as client:  # a later session sees it, not as its own
        [view] = (await ok(client, "sandbox_list"))["items"]
        assert (view["id"], view["session"]) == (kept, False)
        await ok(client, "sandbox_remove", id=kept)


async def test_a_task_runs_is_answered_and_completes_in_the_shared_store(
    home: Path, tmp_path: Path
) -> None:
    given = tmp_path / "in.txt"
    given.write_text("made-by-agent\n")
    steps = [
        act(call("run_shell", command="cp /shared/inbox/in.txt /shared/outbox/out.txt")),
        act(call("ask_user", question="Which colour?")),
        *finish("wrote out.txt"),
    ]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with stdio_client(home) as client:
            started = await ok(
                client, "task_run", description="copy a file, then ask", files=[str(given)]
            )
            task_id = started["id"]
            waiting = await poll_task(client, task_id, lambda t: t["pending"] is not None)
            assert (waiting["status"], waiting["pending"]["question"]) == (
                "waiting_for_user",
                "Which colour?",
            )
            await ok(client, "task_answer", id=task_id, answer="blue")
            done = await poll_task(client, task_id, lambda t: t["status"] == "completed")
            await check_task_resources(client, task_id)
    assert (done["success"], done["summary"], done["artifacts"]) == (
        True,
        "wrote out.txt",
        ["out.txt"],
    )
    assert (Path(done["output_dir"]) / "out.txt").read_text() == "made-by-agent\n"
    assert "blue" in json.dumps(tool_results(llm.requests[2].body))
    # The same store `hivecell tasks` reads; the task's sandbox is gone.
    async with TaskStore(default_database_url(home)) as store:
        record = await store.get(task_id)
    assert (record.status, record.steps) == ("completed", done["steps"])
    assert await LocalProvider(home).list() == []


async def test_task_run_with_wait_sends_progress_until_the_task_ends(home: Path) -> None:
    steps = [act(call("wait", seconds=0)), act(call("wait", seconds=0)), *finish("waited")]
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with stdio_client(home) as client:
            result = await client.call_tool(
                "task_run",
                {"description": "wait twice", "wait": True, "max_steps": 10},
                progress_callback=on_progress,
            )
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "completed"
    assert progress and all(total == 10 for _, total, _ in progress)
    values = [value for value, _, _ in progress]
    assert values == sorted(values) and values[-1] == result.structured_content["steps"] >= 2
    assert progress[-1][2] == f"completed: step {values[-1]:g}"


async def test_a_killed_server_still_leaves_no_sandbox_behind(home: Path) -> None:
    """SIGKILL, no chance to clean up: the session's reaper process removes its boxes."""
    async with stdio_client(home) as client:
        made = (await ok(client, "sandbox_create"))["id"]
        assert [info.id for info in await LocalProvider(home).list()] == [made]
        os.kill(server_pid(home), signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 - the connection just broke
            await client.call_tool("sandbox_list", {})
        await sandboxes_become(home, [])


def server_pid(home: Path) -> int:
    """The ``hivecell mcp`` process serving ``home`` (each test has its own home)."""
    wanted = ["mcp", "--home", str(home)]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "hivecell.cli.main" in argv and argv[-4:-1] == wanted:
            return int(entry.name)
    raise AssertionError(f"no hivecell mcp process for {home}")


async def sandboxes_become(home: Path, ids: list[str], timeout: float = 60) -> None:
    provider = LocalProvider(home)
    with anyio.fail_after(timeout):
        while True:  # another process removes them: polling is all there is
            if sorted(info.id for info in await provider.list()) == sorted(ids):
                return
            await anyio.sleep(0.1)


async def check_task_resources(client: Client, task_id: str) -> None:
    """The trace, the list of output files and one file, as MCP resources; nothing else."""
    base = f"hivecell://tasks/{task_id}"
    [trace] = (await client.read_resource(f"{base}/trace")).contents
    assert isinstance(trace, TextResourceContents)
    tools = [step.get("tool") for step in json.loads(trace.text)]
    assert "run_shell" in tools and "ask_user" in tools
    [listing] = (await client.read_resource(f"{base}/artifacts")).contents
    assert isinstance(listing, TextResourceContents)
    [item] = json.loads(listing.text)["items"]
    assert (item["name"], item["size"], item["uri"]) == ("out.txt", 14, f"{base}/artifacts/out.txt")
    [blob] = (await client.read_resource(item["uri"])).contents
    assert isinstance(blob, BlobResourceContents)
    assert base64.b64decode(blob.blob) == b"made-by-agent\n"
    for name in ("../../../etc/passwd", "%2E%2E/%2E%2E/etc/passwd", "other.txt", "/etc/passwd"):
        with pytest.raises(MCPError):
            await client.read_resource(f"{base}/artifacts/{name}")
    with pytest.raises(MCPError, match=r"\[task_not_found\]"):
        await client.read_resource("hivecell://tasks/no-such-task/trace")


async def test_task_cancel_ends_a_task_and_a_disconnect_ends_the_others(home: Path) -> None:
    ask = act(call("ask_user", question="Go on?"))
    async with ScriptedLLMServer([ask, ask]) as llm:
        write_provider(home, llm.base_url)
        async with stdio_client(home) as client:
            first = (await ok(client, "task_run", description="ask, then be cancelled"))["id"]
            await poll_task(client, first, lambda t: t["pending"] is not None)
            cancelled = await ok(client, "task_cancel", id=first)
            assert cancelled["id"] == first
            ended = await poll_task(client, first, lambda t: t["status"] == "cancelled")
            assert ended["success"] is False
            again = await failed(client, "task_cancel", id=first)
            assert text_of(again).startswith("[invalid_params]")
            second = (await ok(client, "task_run", description="ask, then be left"))["id"]
            waiting = await poll_task(client, second, lambda t: t["pending"] is not None)
            assert waiting["sandbox_id"] is not None
        # The client went away mid-task: the task's sandbox does not outlive the session.
        await sandboxes_become(home, [])
