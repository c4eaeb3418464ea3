"""``build_server``: the MCP server with every hivecell tool; who opens a session decides
where sandboxes and tasks come from (``open_session``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager

from mcp.server.mcpserver import MCPServer

from hivecell.mcp import resources, sandbox_tools, task_tools
from hivecell.mcp.session import Session

INSTRUCTIONS = (
    "hivecell runs Linux desktops in sandboxes. Create one with sandbox_create, look at it "
    "with sandbox_screenshot, act with sandbox_click/type/key/scroll, run commands with "
    "sandbox_exec, and move files with sandbox_read_file/sandbox_write_file. Sandboxes this "
    "session creates are removed when it ends unless created with keep=true. To hand a whole "
    "job to a hivecell agent use task_run and follow it with task_status."
)

OpenSession = Callable[[], AbstractAsyncContextManager[Session]]


def build_server(open_session: OpenSession) -> MCPServer[Session]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[Session]) -> AsyncIterator[Session]:
        async with open_session() as session:
            yield session

    with _logging_untouched():
        server: MCPServer[Session] = MCPServer(
            "hivecell", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING"
        )
    sandbox_tools.register(server)
    task_tools.register(server)
    resources.register(server)
    return server


@contextmanager
def _logging_untouched() -> Iterator[None]:
    """MCPServer configures the root logger when built; inside ``hivecell up`` that is the
    server's to decide (its edge configures logging), so whatever it did is undone."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
