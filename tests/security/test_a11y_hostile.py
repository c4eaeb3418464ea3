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

__all__ = ["anyio_backend", "box"]  # module-scoped fixtures, shared with the guest tests
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.xdist_group("a11y-hostile")]


async def test_frozen_app_costs_only_the_budget(box: Any) -> None:
    # First in this module, on purpose: once the hostile pages below are open in the shared
    # box, Chromium fills every walk's budget and the app here was not found within 30 s
    # (two fresh-clone runs under load).
    app = await write(box, "frozen.py", GTK_APP.replace("a11y-gtk", "frozen-gtk"))
    command = f"/usr/bin/python3 {app} {HOME}/frozen-pushed.txt"
    launched = await box.call("open_app", {"name": command, "window_timeout": 20})
    button = await find(box, "push button", "Push me")
    await box.call("run_shell", {"command": f"kill -STOP {launched['pid']}"})
    try:
        with anyio.fail_after(1.0 + 2):  # budget + grace + slack
            result = await tree(box, budget_ms=1000)
        assert result["truncated"] and "did not answer" in result["truncated"]
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
    await box.call("open_url", {"url": f"file://{path}", "window_timeout": 30})
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
