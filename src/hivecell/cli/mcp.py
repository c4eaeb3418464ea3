"""``hivecell mcp``: serve hivecell's sandboxes and agent tasks to an MCP client over stdio."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from hivecell.cli.common import HomeOption, run
from hivecell.config import resolve_home

if TYPE_CHECKING:
    from hivecell.agent.llm import ProviderConfig

# The MCP SDK, store and agent are imported inside the command (seconds of imports that
# every other hivecell command would otherwise pay for).


def mcp(home: Path | None = HomeOption) -> None:
    """Serve MCP over stdio (what Claude Desktop, Claude Code and Cursor launch).

    Sandboxes this session creates are removed when the client disconnects, unless created
    with keep=true. Model settings for task_run come from config.toml and the environment,
    as for `hivecell run`. See docs/mcp.md."""
    root = resolve_home(home)
    run(_serve, root)


async def _serve(home: Path) -> None:
    from hivecell.cli.run import provider_config
    from hivecell.mcp.local import local_session
    from hivecell.mcp.server import build_server

    async def resolve_llm(name: str | None, model: str | None) -> ProviderConfig:
        return await provider_config(name, model, None, None, home)

    server = build_server(partial(local_session, home, resolve_llm))
    await server.run_stdio_async()
