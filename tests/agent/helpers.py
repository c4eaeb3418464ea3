"""Helpers for agent tests: scripted model steps, reading recorded requests, a runner harness.

Everything here is real: a ScriptedLLMServer on loopback spoken to by the real LLMClient, a
real sandbox's guest agent, a real TraceWriter.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from PIL import Image
from pydantic import SecretStr

from hivecell.agent.llm import LLMClient, ProviderConfig
from hivecell.agent.llm.script import Reply, ScriptedToolCall, ScriptItem
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.runner import RunSettings, TaskRunner
from hivecell.sandbox.base import SandboxInfo, SandboxProvider
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.sandbox.router import ProviderRouter
from hivecell.trace import TraceReader, TraceStep, TraceWriter

Request = dict[str, Any]
Hook = Callable[[str, dict[str, Any]], None]


def short_tmp(prefix: str) -> Path:
    # Not tmp_path: sandbox socket paths must stay under 108 bytes, pytest's are long.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def destroy_all(home: Path, pycache: Path) -> None:
    """Remove every sandbox left under ``home`` (e.g. by a killed CLI run)."""

    async def destroy() -> None:
        provider = LocalProvider(home, pycache=pycache)
        for info in await provider.list():
            await provider.destroy(info.id)
        if (home / "vms").is_dir():  # VMs a server made (a failed test leaves them running)
            vms = ProviderRouter(home)
            for info in await vms.list():
                await vms.destroy(info.id)

    anyio.run(destroy)


# --- script steps --------------------------------------------------------------------------
def call(tool: str, /, **arguments: Any) -> ScriptedToolCall:
    return ScriptedToolCall(name=tool, arguments=arguments)


def act(*calls: ScriptedToolCall, text: str | None = None, **fields: Any) -> Reply:
    return Reply(text=text, tool_calls=list(calls), **fields)


def verdict(*, success: bool = True, summary: str = "done", complete: bool = True) -> Reply:
    """The model's answer to the completion check."""
    return Reply(text=json.dumps({"complete": complete, "success": success, "summary": summary}))


def finish(summary: str = "done", *, success: bool = True) -> list[Reply]:
    """Stop calling tools, then answer the completion check."""
    return [Reply(text=summary), verdict(success=success, summary=summary)]


def provider_config(base_url: str, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "name": "scripted",
        "base_url": base_url,
        "api_key": SecretStr("test-key"),
        "model": "scripted-model",
        "max_retries": 2,
        "timeout_s": 30.0,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
    }
    return ProviderConfig.model_validate({**values, **overrides})


# --- reading what the model was sent -------------------------------------------------------
def tool_results(request: Request) -> list[Any]:
    """Contents of the tool messages, JSON-decoded, oldest first."""
    return [json.loads(m["content"]) for m in request["messages"] if m["role"] == "tool"]


def user_texts(request: Request) -> list[str]:
    texts = []
    for message in request["messages"]:
        if message["role"] != "user":
            continue
        content = message["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        texts += [p["text"] for p in parts if p["type"] == "text"]
    return texts


def images(request: Request) -> list[Image.Image]:
    """The screenshots still inline in a request, oldest first."""
    found = []
    for message in request["messages"]:
        for part in message["content"] if isinstance(message.get("content"), list) else []:
            if part["type"] == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                found.append(Image.open(io.BytesIO(base64.b64decode(data))))
    return found


def system_prompt(request: Request) -> str:
    first = request["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def tool_names(request: Request) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools") or []]


async def trace_steps(trace_dir: Path) -> list[TraceStep]:
    return await anyio.to_thread.run_sync(lambda: TraceReader(trace_dir).steps())


# --- a runner on a real sandbox ------------------------------------------------------------
@dataclass
class Harness:
    runner: TaskRunner
    server: ScriptedLLMServer
    guest: GuestClient
    trace_dir: Path
    hooks: list[Hook] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            self.statuses.append(data["status"])
        for hook in self.hooks:
            hook(kind, data)

    def when_status(self, status: str) -> anyio.Event:
        """An event set the first time the runner enters ``status``."""
        reached = anyio.Event()
        self.hooks.append(lambda kind, data: _set_if(reached, kind, data, status))
        return reached

    @property
    def requests(self) -> list[Request]:
        return self.server.chat_requests


def _set_if(event: anyio.Event, kind: str, data: dict[str, Any], status: str) -> None:
    if kind == "status" and data["status"] == status:
        event.set()


@asynccontextmanager
async def harness(
    provider: SandboxProvider,
    sandbox: SandboxInfo,
    steps: list[ScriptItem],
    trace_dir: Path,
    *,
    default: ScriptItem | None = None,
    settings: RunSettings | None = None,
    description: str = "a test task",
) -> AsyncIterator[Harness]:
    async with (
        ScriptedLLMServer(steps, default=default) as server,
        LLMClient(provider_config(server.base_url)) as llm,
        await provider.connect(sandbox.id) as guest,
        TraceWriter(trace_dir) as trace,
    ):
        holder: list[Harness] = []
        runner = TaskRunner(
            description=description,
            guest=guest.call,
            llm=llm,
            trace=trace,
            settings=settings,
            screen=(sandbox.spec.width, sandbox.spec.height),
            on_event=lambda kind, data: holder[0].on_event(kind, data),
        )
        holder.append(Harness(runner, server, guest, trace_dir))
        yield holder[0]
