"""One provider over several: every command that names a sandbox finds it by its id.

Ids say who made them (``vm-`` for qemu, ``sb-`` for local), so ``info``, ``exec``, ``rm``
and the rest work whatever the provider, and ``list`` shows them all. ``create`` goes to
the spec's ``provider``, else the one chosen for this router (``--provider``).
"""

from __future__ import annotations

import builtins
from pathlib import Path

from hivecell.errors import ConfigError
from hivecell.sandbox.base import (
    NetworkConnection,
    SandboxInfo,
    SandboxProvider,
    SandboxSpec,
    SnapshotInfo,
    Snapshotting,
)
from hivecell.sandbox.base import SandboxUsage as Usage
from hivecell.sandbox.guest_client import GuestClient

ID_PREFIXES = {"vm-": "qemu"}  # anything else is local's


class ProviderRouter:
    def __init__(self, home: Path, default: str = "local") -> None:
        from hivecell.sandbox.registry import get_provider

        self.home = Path(home)
        self.name = default
        self._get = get_provider
        self._providers: dict[str, SandboxProvider] = {}
        self.default = self._provider(default)

    def _provider(self, name: str) -> SandboxProvider:
        if name not in self._providers:
            self._providers[name] = self._get(name, self.home)
        return self._providers[name]

    def _for(self, sandbox_id: str) -> SandboxProvider:
        for prefix, name in ID_PREFIXES.items():
            if sandbox_id.startswith(prefix):
                return self._provider(name)
        return self._provider("local")

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """On ``spec.provider``, else this router's default; the spec records which."""
        name = spec.provider or self.name
        return await self._provider(name).create(spec.model_copy(update={"provider": name}))

    async def start(self, sandbox_id: str) -> SandboxInfo:
        return await self._for(sandbox_id).start(sandbox_id)

    async def stop(self, sandbox_id: str) -> SandboxInfo:
        return await self._for(sandbox_id).stop(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        await self._for(sandbox_id).destroy(sandbox_id)

    async def connect(self, sandbox_id: str) -> GuestClient:
        return await self._for(sandbox_id).connect(sandbox_id)

    async def info(self, sandbox_id: str) -> SandboxInfo:
        return await self._for(sandbox_id).info(sandbox_id)

    async def list(self) -> builtins.list[SandboxInfo]:
        found = await self._provider("local").list()
        if (self.home / "vms").is_dir():  # never made a VM: do not load the qemu provider
            found += await self._provider("qemu").list()
        return sorted(found, key=lambda info: info.created_at)

    async def freeze(self, sandbox_id: str, frozen: bool) -> bool:
        return await self._for(sandbox_id).freeze(sandbox_id, frozen)

    async def network_log(self, sandbox_id: str) -> builtins.list[NetworkConnection]:
        return await self._for(sandbox_id).network_log(sandbox_id)

    async def usage(self, sandbox_id: str) -> Usage:
        return await self._for(sandbox_id).usage(sandbox_id)

    # --- snapshots: VMs only ---------------------------------------------------------------
    async def snapshot(self, sandbox_id: str, name: str) -> SnapshotInfo:
        return await self._snapshotting(sandbox_id, "snapshot").snapshot(sandbox_id, name)

    async def restore(self, sandbox_id: str, name: str) -> SandboxInfo:
        return await self._snapshotting(sandbox_id, "restore").restore(sandbox_id, name)

    async def fork(self, sandbox_id: str) -> SandboxInfo:
        return await self._snapshotting(sandbox_id, "fork").fork(sandbox_id)

    async def snapshots(self, sandbox_id: str) -> builtins.list[SnapshotInfo]:
        return await self._snapshotting(sandbox_id, "snapshots").snapshots(sandbox_id)

    async def delete_snapshot(self, sandbox_id: str, name: str) -> None:
        await self._snapshotting(sandbox_id, "delete_snapshot").delete_snapshot(sandbox_id, name)

    def _snapshotting(self, sandbox_id: str, op: str) -> Snapshotting:
        provider = self._for(sandbox_id)
        if not isinstance(provider, Snapshotting):
            raise ConfigError(
                f"sandbox {sandbox_id} is a {provider.name} sandbox, which cannot be "
                "snapshotted, restored or forked: create a VM for that (--provider qemu)",
                op=op,
                context={"id": sandbox_id, "provider": provider.name},
            )
        return provider
