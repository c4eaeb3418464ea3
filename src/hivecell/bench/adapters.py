"""Per-adapter cost: the same agent loop driven through each model adapter.

Each adapter (``openai-chat``, ``anthropic``, ``openai-responses``) talks to its vendor's
scripted server on loopback, which answers at once with one pointer move in that vendor's own
shape (a chat tool call, Claude's ``computer`` ``mouse_move``, a Responses ``computer_call``
``move``). With the server's own time near zero, ``model_round_trip`` is what the adapter
costs per step: translating the history and tools into the vendor's request, the SDK encoding
it, the loopback HTTP exchange and mapping the reply back to hivecell tool calls.
``overhead_per_step`` is the runner's own time, as in ``measure_agent``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from hivecell.agent.llm import ProviderConfig, make_model
from hivecell.agent.llm.script import Reply, ScriptedToolCall
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.llm.scripted_claude import ClaudeReply, ScriptedClaudeServer, computer
from hivecell.agent.llm.scripted_responses import Output, ScriptedResponsesServer, computer_call
from hivecell.bench.stats import Stats
from hivecell.bench.steps import timed_steps
from hivecell.sandbox.base import SandboxInfo, SandboxProvider

Kind = Literal["openai-chat", "anthropic", "openai-responses"]
KINDS: tuple[Kind, ...] = ("openai-chat", "anthropic", "openai-responses")
POINT = (40, 30)  # where every scripted move goes, in screenshot pixels
CLAUDE_MODEL = "claude-sonnet-4-5"  # a model of the adapter's table: its computer tool version


class AdapterReport(BaseModel):
    overhead_per_step: Stats
    model_round_trip: Stats


async def measure_adapters(
    provider: SandboxProvider, info: SandboxInfo, workdir: Path, *, steps: int
) -> dict[str, AdapterReport]:
    """Each adapter in turn on the running sandbox ``info``; traces go under ``workdir``."""
    reports: dict[str, AdapterReport] = {}
    for kind in KINDS:
        reports[kind] = await _measure(provider, info, workdir / kind, kind, steps)
    return reports


async def _measure(
    provider: SandboxProvider, info: SandboxInfo, trace_dir: Path, kind: Kind, steps: int
) -> AdapterReport:
    async with _scripted(kind) as config, make_model(config) as model:
        parts = await timed_steps(
            provider,
            info,
            model,
            trace_dir,
            steps=steps,
            description="benchmark: move the pointer, again and again",
        )
    return AdapterReport(
        overhead_per_step=parts["overhead_per_step"], model_round_trip=parts["model_call"]
    )


def _scripted(kind: Kind) -> AbstractAsyncContextManager[ProviderConfig]:
    if kind == "anthropic":
        return _claude()
    if kind == "openai-responses":
        return _responses()
    return _chat()


def _config(kind: Kind, base_url: str, model: str) -> ProviderConfig:
    return ProviderConfig(
        name=f"bench-{kind}", kind=kind, base_url=base_url, api_key=SecretStr("bench"), model=model
    )


@asynccontextmanager
async def _chat() -> AsyncIterator[ProviderConfig]:
    move = ScriptedToolCall(name="mouse_move", arguments={"x": POINT[0], "y": POINT[1]})
    async with ScriptedLLMServer(default=Reply(tool_calls=[move])) as server:
        yield _config("openai-chat", server.base_url, "scripted")


@asynccontextmanager
async def _claude() -> AsyncIterator[ProviderConfig]:
    move = ClaudeReply(tool_uses=[computer("mouse_move", coordinate=list(POINT))])
    async with ScriptedClaudeServer(default=move) as server:
        yield _config("anthropic", server.base_url, CLAUDE_MODEL)


@asynccontextmanager
async def _responses() -> AsyncIterator[ProviderConfig]:
    def move(_: dict[str, Any]) -> Output:  # a fresh call id each time: the API pairs them
        return Output([computer_call({"type": "move", "x": POINT[0], "y": POINT[1]})])

    async with ScriptedResponsesServer(default=move) as server:
        yield _config("openai-responses", server.base_url, "computer-use-preview")
