"""What one MCP session works with: its sandboxes and a task backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context

from hivecell.mcp.boxes import SessionSandboxes
from hivecell.mcp.tasks import TaskBackend


@dataclass
class Session:
    sandboxes: SessionSandboxes
    tasks: TaskBackend


def session_of(ctx: Context[Any, Any]) -> Session:
    session = ctx.request_context.lifespan_context
    assert isinstance(session, Session)
    return session
