"""The session ``hivecell mcp`` (stdio) opens: the local provider, tasks in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from hivecell.mcp.boxes import SandboxAccess, SessionSandboxes
from hivecell.mcp.reaper import Reaper
from hivecell.mcp.session import Session
from hivecell.mcp.tasks import LocalTasks, ResolveLLM
from hivecell.sandbox.registry import get_provider
from hivecell.sandbox.transfer import TransferLimits
from hivecell.store import TaskStore, default_database_url


@asynccontextmanager
async def local_session(
    home: Path, resolve_llm: ResolveLLM, limits: TransferLimits | None = None
) -> AsyncIterator[Session]:
    """Until the client disconnects; then its running tasks are cancelled and the sandboxes
    it made (and did not keep) are removed."""
    provider = get_provider("local", home)
    reaper = Reaper(home, provider.name)
    sandboxes = SessionSandboxes(SandboxAccess(provider), reaper)
    async with TaskStore(default_database_url(home)) as store:
        await store.mark_interrupted()  # tasks of processes that died (not other live ones)
        try:
            async with LocalTasks(
                home=home,
                provider=provider,
                store=store,
                resolve_llm=resolve_llm,
                transfer_limits=limits,
                reaper=reaper,
            ) as tasks:
                yield Session(sandboxes, tasks)
        finally:
            with anyio.CancelScope(shield=True):
                await sandboxes.close()
