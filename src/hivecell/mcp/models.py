"""What the sandbox tools return (their output schemas)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hivecell.sandbox.base import SandboxInfo


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SandboxView(_Out):
    id: str
    provider: str
    status: str
    width: int
    height: int
    network: str
    session: bool = Field(description="created by this MCP session")
    keep: bool = Field(description="stays after the session ends (created with keep)")


class SandboxList(_Out):
    items: list[SandboxView]


class Removed(_Out):
    id: str
    removed: bool = True


class Acted(_Out):
    id: str
    action: str


class ExecOutput(_Out):
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = Field(description="output was cut at the guest's limit")
    duration_ms: float


class FileContent(_Out):
    path: str
    content: str
    encoding: Literal["text", "base64"]


class Written(_Out):
    path: str
    size: int


def sandbox_view(info: SandboxInfo, *, session: bool, keep: bool) -> SandboxView:
    return SandboxView(
        id=info.id,
        provider=info.provider,
        status=info.status,
        width=info.spec.width,
        height=info.spec.height,
        network=info.spec.network,
        session=session,
        keep=keep,
    )
