"""The parts of the MCP server that need no sandbox: the reaper's id list, the error
boundary, and building the server without touching the process's logging."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import pytest
from mcp.types import TextContent

from hivecell.errors import PathDenied
from hivecell.mcp.errors import tool_errors
from hivecell.mcp.reaper import read_ids
from hivecell.mcp.server import build_server

pytestmark = pytest.mark.anyio


def test_the_reaper_removes_what_was_adopted_and_not_released() -> None:
    lines = ["+sb-1", "+sb-2", "-sb-1", "+sb-3\n", "garbage", "+../etc", "+", "-sb-9", "+sb-3"]
    assert read_ids(lines) == ["sb-2", "sb-3"]


async def test_a_hivecell_error_becomes_a_tool_error_with_its_code() -> None:
    async def tool(path: str) -> str:
        raise PathDenied(f"{path} is outside", op="read_file", context={"path": path})

    result = await tool_errors(tool)("/etc/shadow")
    assert not isinstance(result, str) and result.is_error
    assert result.content == [
        TextContent(type="text", text="[path_denied] read_file: /etc/shadow is outside")
    ]
    assert result.structured_content == {
        "error": "path_denied",
        "message": "/etc/shadow is outside",
        "op": "read_file",
        "context": {"path": "/etc/shadow"},
        "retryable": False,
    }


def test_building_the_server_leaves_the_root_logger_alone() -> None:
    """As in a fresh ``hivecell up`` process: no root handlers (pytest's own set aside)."""

    @asynccontextmanager
    async def no_session():  # type: ignore[no-untyped-def]
        yield None

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        build_server(no_session)
        assert (root.handlers, root.level) == ([], level)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
