"""Driving ``hivecell mcp`` the way an MCP client does: the SDK's own stdio client launching
the real command, against real sandboxes under the test's home."""

from __future__ import annotations

import base64
import io
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import CallToolResult, ImageContent, TextContent
from PIL import Image

# The test's own settings must not leak into the server under test.
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HIVECELL_"))}


def stdio_params(home: Path) -> StdioServerParameters:
    args = ["-m", "hivecell.cli.main", "mcp", "--home", str(home)]
    return StdioServerParameters(command=sys.executable, args=args, env=ENV)


@asynccontextmanager
async def stdio_client(home: Path) -> AsyncIterator[Client]:
    # Each request (the handshake too) times out by itself: a server that hangs fails the test.
    async with Client(stdio_params(home), read_timeout_seconds=120) as client:
        yield client


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}: {text_of(result)}"
    assert result.structured_content is not None
    return dict(result.structured_content)


async def failed(client: Client, tool: str, **arguments: Any) -> CallToolResult:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} should have failed: {result}"
    return result


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def image_of(result: CallToolResult) -> Image.Image:
    [block] = result.content
    assert isinstance(block, ImageContent) and block.mime_type == "image/png"
    image = Image.open(io.BytesIO(base64.b64decode(block.data)))
    assert image.format == "PNG"
    return image


async def poll_task(
    client: Client, task_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 90
) -> dict[str, Any]:
    """task_status until ``check`` holds (polling is what an MCP client can do)."""
    with anyio.fail_after(timeout):
        while True:
            view = await ok(client, "task_status", id=task_id)
            if check(view):
                return view
            await anyio.sleep(0.1)
