"""The sandboxes one MCP session works with, and the rule that removes them afterwards.

A session may drive any sandbox its host lets it (``SandboxAccess``); the ones it creates are
remembered, and when the client disconnects every one not created with ``keep`` is removed
(an MCP client that crashes or closes must not leave desktops running on the host): by the
server itself, or, for a stdio server that its client may kill at any moment, by its
``Reaper`` process.

Each call opens its own guest connection: a connection lives in a task group, and an MCP
server runs each request in its own task, so a connection cannot outlive the call that opened
it. Opening one is a unix-socket connect (about a millisecond).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import ValidationError

from hivecell.errors import HivecellError, InvalidParams
from hivecell.mcp.reaper import Reaper
from hivecell.protocol.jsonrpc import describe_validation
from hivecell.sandbox.base import SandboxInfo, SandboxProvider, SandboxSpec, create_owned
from hivecell.sdk.async_sandbox import AsyncSandbox


class SandboxAccess:
    """What a session may do with the host's sandboxes. The default (``hivecell mcp``) is
    the local user's own provider; the server narrows it (capacity, task sandboxes)."""

    def __init__(self, provider: SandboxProvider) -> None:
        self.provider = provider

    def spec(self, given: dict[str, Any]) -> SandboxSpec:
        """The sandbox to create: ``given`` over the defaults."""
        try:
            return SandboxSpec.model_validate(given)
        except ValidationError as exc:
            raise InvalidParams(describe_validation(exc), op="sandbox_create") from None

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        return await create_owned(self.provider, spec)

    async def destroy(self, sandbox_id: str) -> None:
        await self.provider.info(sandbox_id)  # unknown ids: sandbox_not_found
        await self.provider.destroy(sandbox_id)

    async def check_drive(self, info: SandboxInfo) -> None:
        """Raise if this sandbox may not be acted on now (the server: a task's desktop)."""

    async def list(self) -> builtins.list[SandboxInfo]:
        return await self.provider.list()


class SessionSandboxes:
    def __init__(self, access: SandboxAccess, reaper: Reaper | None = None) -> None:
        self.access = access
        self.reaper = reaper
        self._made: dict[str, bool] = {}  # sandbox id -> keep

    def made(self, sandbox_id: str) -> bool:
        return sandbox_id in self._made

    def kept(self, sandbox_id: str) -> bool:
        return self._made.get(sandbox_id, False)

    async def create(self, spec: SandboxSpec, *, keep: bool) -> SandboxInfo:
        # Shielded: a client that gives up mid-boot must not leave a half-made box behind.
        with anyio.CancelScope(shield=True):
            if self.reaper is not None:
                await self.reaper.start()  # up before the box: adopting it is one write
            info = await self.access.create(spec)
            self._made[info.id] = keep
            if self.reaper is not None and not keep:
                await self.reaper.adopt(info.id)
        return info

    async def remove(self, sandbox_id: str) -> None:
        await self.access.destroy(sandbox_id)
        if self._made.pop(sandbox_id, None) is False and self.reaper is not None:
            await self.reaper.release(sandbox_id)

    @contextlib.asynccontextmanager
    async def open(self, sandbox_id: str, *, act: bool = True) -> AsyncIterator[AsyncSandbox]:
        """A connected SDK handle (closed, never destroyed, afterwards). ``act``: the call
        changes the desktop or its files, so the host's drive rule applies."""
        info = await self.access.provider.info(sandbox_id)
        if act:
            await self.access.check_drive(info)
        async with AsyncSandbox(info, self.access.provider, owned=False) as sandbox:
            yield sandbox

    async def close(self) -> builtins.list[str]:
        """The client is gone: remove what it made and did not ask to keep (a reaper is
        handed the work: this process may be killed any moment now)."""
        removed = [sandbox_id for sandbox_id, keep in self._made.items() if not keep]
        self._made.clear()
        with anyio.CancelScope(shield=True):
            if self.reaper is not None:
                await self.reaper.close()
                return removed
            for sandbox_id in removed:
                with contextlib.suppress(HivecellError):  # already gone: nothing to do
                    await self.access.destroy(sandbox_id)
        return removed
