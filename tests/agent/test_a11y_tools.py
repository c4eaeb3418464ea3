"""The model's accessibility tools through a TaskRunner: a scripted model reads the tree of a
real GTK app in a real sandbox, then clicks a button by the id it read there."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm.script import Reply
from hivecell.agent.runner import RunSettings
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import act, call, finish, harness, tool_names, tool_results, user_texts
from tests.guest.test_a11y_tree import GTK_APP, HOME, find, write

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
BUTTON_LINE = re.compile(r'\[([0-9.]+:[^\]]+)\] push button "Push me"')


def click_what_the_tree_shows(request: dict[str, Any]) -> Reply:
    """The model's second step: the id comes from the tree it was just given."""
    [result] = tool_results(request)
    match = BUTTON_LINE.search(result["tree"])
    assert match, result["tree"]
    return act(call("click_element", id=match.group(1)))


async def test_model_reads_the_tree_and_clicks_an_element(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps = [act(call("accessibility_tree")), click_what_the_tree_shows, *finish()]
    settings = RunSettings(observe_tree=True)
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        app = await write(h.guest, "app.py", GTK_APP)
        marker = f"{HOME}/pushed.txt"
        command = f"/usr/bin/python3 {app} {marker}"
        await h.guest.call("open_app", {"name": command, "window_timeout": 120})
        await find(h.guest, "push button", "Push me")
        with anyio.fail_after(120):
            outcome = await h.runner.run()
        assert outcome.status == "completed", outcome
        pushed = await h.guest.call("run_shell", {"command": f"cat {marker}"})
    assert pushed["stdout"] == "pushed"
    first = h.requests[0]
    assert {"accessibility_tree", "click_element", "set_element_text"} <= set(tool_names(first))
    [clicked] = tool_results(h.requests[2])[1:]
    assert clicked["how"].startswith("action")
    # observe_tree: every observation carries the tree; older ones are replaced by a note
    texts = user_texts(h.requests[2])
    trees = [t for t in texts if t.startswith("Accessibility tree")]
    assert len(trees) == 1 and 'push button "Push me"' in trees[0]
    assert sum(t == "[older accessibility tree omitted]" for t in texts) == 2
