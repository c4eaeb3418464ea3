"""A TaskRunner on a real sandbox driven by AnthropicClient through Claude's native tools.

The scripted Messages API server plays the model: it finds the xterm in the screenshot it was
sent, clicks it with the ``computer`` tool (in the scaled-down image's pixels), types a shell
command and presses Return, edits a file with the text editor tool, then finishes. The files
the shell and the editor wrote prove each action landed where the model meant.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from pydantic import SecretStr

from hivecell.agent.llm import ProviderConfig, make_model
from hivecell.agent.llm.scripted_claude import (
    ClaudeReply,
    ClaudeStep,
    ScriptedClaudeServer,
    computer,
    use,
)
from hivecell.agent.runner import RunSettings, TaskRunner
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.trace import TraceWriter
from tests.screens import bright_box

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]
EDITOR = "str_replace_based_edit_tool"


@pytest.fixture
async def tall_sandbox(provider: LocalProvider) -> AsyncIterator[SandboxInfo]:
    # 1280x1024 is over Anthropic's 1.15 MP: the adapter must scale and map clicks back.
    info = await provider.create(SandboxSpec(width=1280, height=1024))
    try:
        yield info
    finally:
        await provider.destroy(info.id)


def last_image(request: dict[str, Any]) -> Image.Image:
    found = [
        block
        for turn in request["messages"]
        for block in turn["content"]
        for block in [
            block,
            *(block.get("content") or [] if block["type"] == "tool_result" else []),
        ]
        if block["type"] == "image"
    ]
    data = base64.b64decode(found[-1]["source"]["data"])
    return Image.open(io.BytesIO(data)).convert("RGB")


def white_center(image: Image.Image) -> list[int]:
    """The middle of the xterm's white background."""
    box = bright_box(image, level=247)
    assert box is not None, "no xterm in the screenshot"
    return [(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]


class Model:
    """The scripted Claude: each step checks what it was sent, then acts."""

    def __init__(self) -> None:
        self.clicked: list[int] = []
        self.display: tuple[int, int] = (0, 0)
        self.zoomed: list[int] = []

    def steps(self) -> list[Any]:
        return [self.open_xterm, self.click_and_type, self.look, self.edit, self.stop, self.verdict]

    def open_xterm(self, request: dict[str, Any]) -> ClaudeStep:
        tool = next(t for t in request["tools"] if t["name"] == "computer")
        assert tool["type"] == "computer_20251124"
        self.display = (tool["display_width_px"], tool["display_height_px"])
        assert self.display[0] * self.display[1] <= 1_150_000
        assert last_image(request).size == self.display
        return ClaudeReply(tool_uses=[use("open_app", name="xterm")])

    def click_and_type(self, request: dict[str, Any]) -> ClaudeStep:
        self.clicked = white_center(last_image(request))
        return ClaudeReply(
            text="I click into the terminal and run a command.",
            tool_uses=[
                computer("left_click", coordinate=self.clicked),
                computer("type", text="echo clicked-$((6*7)) > /shared/workspace/proof.txt"),
                computer("key", text="Return"),
            ],
        )

    def look(self, request: dict[str, Any]) -> ClaudeStep:
        answers = request["messages"][-1]["content"]
        calls = request["messages"][-2]["content"]
        assert [a["tool_use_id"] for a in answers[:3]] == [c["id"] for c in calls[1:]]
        assert not any(a.get("is_error") for a in answers[:3]), answers
        assert answers[2]["content"][-1]["type"] == "image"  # the screenshot after the step
        x, y = self.clicked
        self.zoomed = [x - 40, y - 30, x + 40, y + 30]
        return ClaudeReply(
            tool_uses=[computer("cursor_position"), computer("zoom", region=self.zoomed)]
        )

    def edit(self, request: dict[str, Any]) -> ClaudeStep:
        answers = request["messages"][-1]["content"]
        assert not any(a.get("is_error") for a in answers[:2]), answers
        # where the pointer is, in the pixels of the image the model was sent
        assert answers[0]["content"][0]["text"] == "X={},Y={}".format(*self.clicked)
        # the zoomed region comes back as an image, 80x60 model pixels enlarged (at most 8x
        # the screenshot's pixels), inside the zoom's own result before the step's screenshot
        images = [b for b in answers[1]["content"] if b["type"] == "image"]
        assert len(images) == 2, answers[1]
        zoomed = Image.open(io.BytesIO(base64.b64decode(images[0]["source"]["data"])))
        assert 80 * 8 <= zoomed.size[0] <= self.display[0], zoomed.size
        assert 60 * 8 <= zoomed.size[1] <= self.display[1], zoomed.size
        assert bright_box(zoomed.convert("RGB"), level=247) is not None  # the xterm's white
        path = "/shared/workspace/notes.txt"
        return ClaudeReply(
            tool_uses=[
                use(EDITOR, command="create", path=path, file_text="alpha\nbeta\n"),
                use(EDITOR, command="str_replace", path=path, old_str="beta", new_str="gamma"),
                use(EDITOR, command="str_replace", path=path, old_str="delta", new_str="x"),
            ]
        )

    def stop(self, request: dict[str, Any]) -> ClaudeStep:
        results = request["messages"][-1]["content"]
        missing = json.loads(results[2]["content"][0]["text"])
        assert results[2]["is_error"] is True and "does not occur" in missing["error"]
        return ClaudeReply(text="The command ran and the notes are edited.")

    def verdict(self, request: dict[str, Any]) -> ClaudeStep:
        assert request["tool_choice"] == {"type": "tool", "name": "respond"}
        answer = {"complete": True, "success": True, "summary": "ran and edited"}
        return ClaudeReply(tool_uses=[use("respond", **answer)])


async def wait_for_text(path: anyio.Path, expected: str) -> str:
    with anyio.fail_after(20):
        # The shell in the xterm writes it on its own time; nothing to wait on but the file.
        while not (await path.exists() and await path.read_text() == expected):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    return expected


async def test_claude_drives_the_desktop_through_its_native_tools(
    provider: LocalProvider, tall_sandbox: SandboxInfo, tmp_path: Path
) -> None:
    model = Model()
    sandbox = tall_sandbox
    config = ProviderConfig(
        name="claude",
        kind="anthropic",
        base_url="http://127.0.0.1:1",  # replaced below once the server has a port
        api_key=SecretStr("sk-ant-test"),
        model="claude-opus-4-5",
        max_retries=0,
    )
    settings = RunSettings(approval_tools=[], screenshot_max_width=1280)
    async with ScriptedClaudeServer(model.steps()) as server:
        config = config.model_copy(update={"base_url": server.base_url})
        async with (
            make_model(config) as llm,
            await provider.connect(sandbox.id) as guest,
            TraceWriter(tmp_path / "trace") as trace,
        ):
            runner = TaskRunner(
                description="run a command in a terminal and edit the notes",
                guest=guest.call,
                llm=llm,
                trace=trace,
                settings=settings,
                screen=(sandbox.spec.width, sandbox.spec.height),
            )
            with anyio.fail_after(120):
                outcome = await runner.run()
            cursor = await guest.call("get_cursor_position")
    assert outcome.status == "completed", outcome
    assert outcome.usage.prompt_tokens > 0 and outcome.steps == 5
    workspace = anyio.Path(sandbox.shared_dir) / "workspace"
    assert await wait_for_text(workspace / "proof.txt", "clicked-42\n")
    assert await (workspace / "notes.txt").read_text() == "alpha\ngamma\n"
    # the click landed where the model pointed in its smaller image
    width, height = model.display
    expected = [round(model.clicked[0] * 1280 / width), round(model.clicked[1] * 1024 / height)]
    assert abs(cursor["x"] - expected[0]) <= 1 and abs(cursor["y"] - expected[1]) <= 1
    assert all("computer-use-2025-11-24" in r.headers["anthropic-beta"]
               for r in server.message_requests)  # fmt: skip
