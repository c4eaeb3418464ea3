"""The catalogue through the runner on a real sandbox: domains per task, approvals, zoom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent import catalog, tools
from hivecell.agent.runner import RunSettings
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import (
    Harness,
    act,
    call,
    finish,
    harness,
    images,
    tool_names,
    tool_results,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_only_the_enabled_domains_are_offered(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    settings = RunSettings(tool_domains=["browser", "display"])
    steps = [
        act(call("run_shell", command="touch /shared/workspace/ran")),
        act(call("zoom", x=0, y=0, width=100, height=50, zoom=2)),
        *finish(),
    ]
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        with anyio.fail_after(60):
            outcome = await h.runner.run()
    assert outcome.status == "completed"
    offered = set(tool_names(h.requests[0]))
    assert offered == catalog.CORE | set(catalog.DOMAINS["browser"]) | {"screen_size", "zoom"}
    refused = tool_results(h.requests[1])[-1]
    assert "unknown or disabled tool 'run_shell'" in refused["error"]
    assert not await anyio.Path(sandbox.shared_dir, "workspace", "ran").exists()
    # zoom: the enlarged region reaches the model as an image beside the step's screenshot
    note = tool_results(h.requests[2])[-1]
    assert "zoomed image follows" in note["note"]
    assert (200, 100) in [image.size for image in images(h.requests[2])]


async def test_default_domains_keep_every_earlier_tool(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    async with harness(provider, sandbox, finish(), tmp_path / "t") as h:
        with anyio.fail_after(60):
            await h.runner.run()
    offered = set(tool_names(h.requests[0]))
    before = {
        "screenshot", "mouse_click", "mouse_double_click", "mouse_move", "mouse_drag", "scroll",
        "keyboard_type", "keyboard_key", "run_shell", "read_file", "write_file",
        "list_directory", "move_file", "delete_file", "open_app", "open_file", "open_url",
        "clipboard_read", "clipboard_write", "wait", "ask_user", "ask_user_choice",
    }  # fmt: skip
    assert before <= offered
    assert {"tile_window", "list_windows", "trash_file", "force_quit_app", "zoom"} <= offered
    assert not offered & {"browser_open", "media_play"}


def test_every_tool_belongs_to_a_domain_or_is_always_offered() -> None:
    """A tool in no domain would never reach the model: each one added later must say where
    it belongs (the accessibility tools and the Anthropic adapter's tools were once missed)."""
    homeless = [name for name in tools.TOOLS if name not in catalog.CORE and not
                catalog.tool_domain(name)]  # fmt: skip
    assert homeless == []
    offered = set(tools.TOOLS) - catalog.outside(catalog.DEFAULT_DOMAINS)
    assert {"accessibility_tree", "click_element", "set_element_text", "edit_file"} <= offered


def test_unknown_domains_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown tool domain"):
        RunSettings(tool_domains=["spaces"])


async def test_dangerous_catalogue_tools_wait_for_approval(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    workspace = anyio.Path(sandbox.shared_dir) / "workspace"
    await (workspace / "a.txt").write_text("new")
    await (workspace / "b.txt").write_text("old")
    await (workspace / "junk.txt").write_text("junk")
    steps = [
        act(call("copy_file", source="/shared/workspace/a.txt",
                 destination="/shared/workspace/c.txt")),
        act(call("trash_file", path="/shared/workspace/junk.txt")),
        act(call("copy_file", source="/shared/workspace/a.txt",
                 destination="/shared/workspace/b.txt", overwrite=True)),
        act(call("empty_trash")),
        act(call("kill_process", pid=99999)),
        act(call("force_quit_app", name="xterm")),
        *finish(),
    ]  # fmt: skip
    asked: list[dict[str, Any]] = []
    decisions = ["approve", "deny", "deny", "deny"]

    async def person(h: Harness) -> None:
        for decision in decisions:
            waiting = h.when_status("waiting_for_user")
            await waiting.wait()
            pending = h.runner.control.pending
            assert pending is not None
            asked.append(pending.as_dict())
            if decision == "approve":
                # nothing has been overwritten while the person decides
                assert await (workspace / "b.txt").read_text() == "old"
                h.runner.control.approve()
            else:
                h.runner.control.deny("no")
            resumed = h.when_status("running")
            await resumed.wait()

    async with harness(provider, sandbox, steps, tmp_path / "t") as h:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(person, h)
                outcome = await h.runner.run()
        trashed = tool_results(h.requests[2])[-1]
        folder = str(Path(trashed["path"]).parent)
        listing = await h.guest.call("list_directory", {"path": folder})
    assert outcome.status == "completed"
    assert [a["tool"] for a in asked] == [
        "copy_file", "empty_trash", "kill_process", "force_quit_app",
    ]  # fmt: skip
    assert "may overwrite /shared/workspace/b.txt" in asked[0]["reason"]
    assert await (workspace / "c.txt").read_text() == "new"  # no overwrite: did not ask
    assert await (workspace / "b.txt").read_text() == "new"  # approved
    # trash_file did not ask; the denied empty_trash left the item in the trash
    assert trashed["path"].endswith("/Trash/files/junk.txt")
    denied = tool_results(h.requests[4])[-1]
    assert "denied empty_trash" in denied["error"]
    assert [e["name"] for e in listing["entries"]] == ["junk.txt"]


async def test_browser_domain_in_a_sandbox(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    page = anyio.Path(sandbox.shared_dir) / "workspace" / "page.html"
    await page.write_text("<title>Sandbox Page</title><p>inside the box</p>")
    settings = RunSettings(tool_domains=["browser", "system", "app"])
    steps = [
        act(call("browser_open", url="file:///shared/workspace/page.html")),
        act(call("browser_page_text")),
        act(call("open_url", url="file:///shared/workspace/page.html#again")),
        act(call("browser_tabs")),
        act(call("run_shell", command="cat /proc/net/tcp /proc/net/tcp6 | awk '$4==\"0A\"'")),
        *finish(),
    ]
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        with anyio.fail_after(120):
            outcome = await h.runner.run()
    assert outcome.status == "completed"
    opened = tool_results(h.requests[1])[-1]
    assert (opened["title"], opened["url"]) == (
        "Sandbox Page",
        "file:///shared/workspace/page.html",
    )
    text = tool_results(h.requests[2])[-1]
    assert text["text"].strip() == "inside the box"
    # open_url opens in the same (controlled) browser: its tab is one browser_tabs lists
    tabs = tool_results(h.requests[4])[-1]["tabs"]
    assert [t["url"] for t in tabs] == [
        "file:///shared/workspace/page.html",
        "file:///shared/workspace/page.html#again",
    ], tabs
    listening = tool_results(h.requests[5])[-1]
    assert listening["stdout"].strip() == ""  # nothing in the box listens on TCP, DevTools neither
