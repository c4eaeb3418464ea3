"""A hostile page or a frozen app against the accessibility tree, in a real sandbox: every
call returns within its budget, cut short with a note, and the guest keeps answering."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from hivecell.errors import Timeout
from tests.guest.test_a11y_tree import (
    GTK_APP,
    HOME,
    HOSTILE_DEEP,
    HOSTILE_WIDE,
    anyio_backend,
    box,
    find,
    tree,
    window_titled,
    write,
)
from tests.guest.xdisplay import X_STATE

__all__ = ["anyio_backend", "box"]  # module-scoped fixtures, shared with the guest tests
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.xdist_group("a11y-hostile")]


async def test_a_frozen_app_is_left_out_and_the_others_still_walked(box: Any) -> None:
    # A stopped app never answers: it costs the walk one quiet wait, then the walk goes on
    # through the other apps (before, it used the whole budget and cut the walk short).
    app = await write(box, "frozen.py", GTK_APP.replace("a11y-gtk", "frozen-gtk"))
    command = f"/usr/bin/python3 {app} {HOME}/frozen-pushed.txt"
    launched = await box.call("open_app", {"name": command, "window_timeout": 120})
    button = await find(box, "push button", "Push me")
    await box.call("run_shell", {"command": f"kill -STOP {launched['pid']}"})
    try:
        live = await write(box, "live.py", GTK_APP.replace("a11y-gtk", "live-gtk"))
        await box.call("open_app", {"name": f"/usr/bin/python3 {live} {HOME}/live.txt"})
        with anyio.fail_after(30):
            while True:
                with anyio.fail_after(1.0 + 2):  # budget + grace + slack
                    result = await tree(box, budget_ms=1000)
                assert result["truncated"] and "did not answer" in result["truncated"]
                pushes = [n for n in result["nodes"] if n["name"] == "Push me"]
                assert button["id"] not in {n["id"] for n in pushes}  # the frozen one's
                if pushes:
                    break  # the live app's button, found beside the frozen app
                await anyio.sleep(0.1)
        with anyio.fail_after(10), pytest.raises(Timeout, match="did not answer"):
            await box.call("click_element", {"id": button["id"]})
        with anyio.fail_after(5):
            await box.call("ping", {})
    finally:
        await box.call("run_shell", {"command": f"kill -KILL {launched['pid']}"})


@pytest.mark.parametrize("page", [HOSTILE_WIDE, HOSTILE_DEEP], ids=["wide", "deep"])
async def test_hostile_page_stays_within_limits(box: Any, page: str) -> None:
    name = "wide" if page is HOSTILE_WIDE else "deep"
    path = await write(box, f"{name}.html", page)
    try:
        await box.call("open_url", {"url": f"file://{path}", "window_timeout": 120})
    except Timeout as exc:  # seen twice in ~20 fresh-clone runs, never reproduced alone
        raise AssertionError(f"{exc}\n{await _what_the_box_shows(box)}") from exc
    await window_titled(box, f"{name} ready")
    # Chromium sends the huge page's tree to its browser process over seconds and answers
    # slowly meanwhile: every walk must return within its budget, and one is cut short.
    with anyio.fail_after(60):
        while True:
            with anyio.fail_after(3 + 2):  # budget + the call's grace + slack
                result = await tree(box, max_nodes=200, max_depth=60, budget_ms=3000)
            assert len(result["nodes"]) <= 200
            assert max((n["depth"] for n in result["nodes"]), default=0) <= 60
            if result["truncated"]:
                break
            await anyio.sleep(0.2)
    assert f"(truncated: {result['truncated']}" in result["text"]
    with anyio.fail_after(5):  # the guest still answers at once
        await box.call("ping", {})


async def test_a_small_app_is_found_beside_the_hostile_pages(box: Any) -> None:
    # After the tests above, Chromium holds the 50 000-element and the deep page: the walk
    # shares its visits between apps, so a small app's button is not crowded out.
    source = GTK_APP.replace("a11y-gtk", "small-gtk").replace("Push me", "Small push")
    app = await write(box, "small.py", source)
    await box.call("open_app", {"name": f"/usr/bin/python3 {app} {HOME}/small.txt"})
    button = await find(box, "push button", "Small push")
    await box.call("click_element", {"id": button["id"]})
    with anyio.fail_after(10):
        while (await box.call("run_shell", {"command": f"cat {HOME}/small.txt"}))[  # noqa: ASYNC110
            "stdout"
        ] != "pushed":
            await anyio.sleep(0.05)


async def _what_the_box_shows(box: Any) -> str:
    """Where Chromium is stuck, for the failure's message: its processes (state, kernel wait
    channel), the windows X knows and the window manager's list."""
    command = f"ps -eo pid,ppid,stat,wchan:32,etime,args | cut -c1-200; {X_STATE}"
    with anyio.fail_after(60):
        shown = await box.call("run_shell", {"command": command, "timeout": 30})
    return f"{shown['stdout']}{shown['stderr']}"
