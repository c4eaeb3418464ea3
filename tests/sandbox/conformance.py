"""The conformance suite every sandbox provider must pass.

Subclass ``ProviderConformance`` in a ``test_*.py`` module and give it a ``provider``
fixture: a fresh provider whose leftover sandboxes the fixture destroys afterwards (see
``test_local_conformance.py``). The tests only use the provider protocol, the guest agent
and what the host can see in /proc, so a VM provider runs them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from hivecell.errors import HivecellError, SandboxNotFound
from hivecell.sandbox.base import SandboxInfo, SandboxProvider, SandboxSpec, SandboxUsage
from hivecell.sandbox.guest_client import GuestClient
from tests.sandbox import host
from tests.sandbox.host import sh_out

UNKNOWN_ID = "sb-00000000"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ProviderConformance:
    spec = SandboxSpec(width=800, height=600, memory_mb=1024, max_pids=256)
    # how long a state change may take: a VM under emulation powers off in seconds, not ms
    patience = 15.0
    # a VM's processes and memory are inside it: the host sees its supervisor and QEMU, not
    # a `sleep`, and a guest whose RAM is all resident already grows no further on the host
    host_sees_guest_processes = True
    host_sees_guest_memory = True

    pytestmark = [pytest.mark.anyio, pytest.mark.slow]

    async def test_create_answers_ping_and_is_listed_running(
        self, provider: SandboxProvider
    ) -> None:
        info = await provider.create(self.spec)
        assert (info.status, info.provider, info.spec) == ("running", provider.name, self.spec)
        async with await provider.connect(info.id) as guest:
            assert (await guest.call("ping"))["pong"] is True
        assert (await provider.info(info.id)).status == "running"
        listed = {item.id: item for item in await provider.list()}
        assert listed[info.id].status == "running"

    async def test_exec_runs_as_the_sandbox_user(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        async with await provider.connect(info.id) as guest:
            assert await sh_out(guest, "echo hi; id -un; echo $HOME") == "hi\nuser\n/home/user\n"
            system = await guest.call("get_system_info")
        assert (system["user"], system["home"]) == ("user", "/home/user")

    async def test_shared_folders_work_both_ways(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        shared = anyio.Path(info.shared_dir)
        await (shared / "inbox" / "from-host.txt").write_text("hello box\n")
        async with await provider.connect(info.id) as guest:
            assert await sh_out(guest, "ls /shared") == "inbox\noutbox\nworkspace\n"
            assert await sh_out(guest, "cat /shared/inbox/from-host.txt") == "hello box\n"
            await sh_out(guest, "echo hello host > /shared/outbox/from-box.txt")
        assert await (shared / "outbox" / "from-box.txt").read_text() == "hello host\n"

    async def test_screenshot_shows_the_whole_screen(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        async with await provider.connect(info.id) as guest:
            shot = await guest.call("screenshot", {"format": "png"})
        assert (shot["screen_width"], shot["screen_height"]) == (800, 600)
        assert host.png_bytes(shot).startswith(PNG_MAGIC)

    async def test_vnc_endpoint_speaks_rfb(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        assert info.vnc_endpoint is not None
        async with await provider.connect(info.id) as guest:
            await guest.call("start_vnc")
            assert (await host.read_banner(info.vnc_endpoint, 12)).startswith(b"RFB 003.")
            await guest.call("stop_vnc")

    async def test_stop_then_start_keeps_home_and_shared(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        async with await provider.connect(info.id) as guest:
            await sh_out(guest, "echo kept > ~/note.txt; echo kept > /shared/workspace/w.txt")
        stopped = await provider.stop(info.id)
        assert stopped.status == "stopped"
        assert (await provider.stop(info.id)).status == "stopped"  # idempotent
        with pytest.raises(HivecellError):
            async with await provider.connect(info.id) as guest:
                await guest.call("ping")
        assert (await provider.start(info.id)).status == "running"
        async with await provider.connect(info.id) as guest:
            assert await sh_out(guest, "cat ~/note.txt /shared/workspace/w.txt") == "kept\nkept\n"

    async def test_shutdown_from_inside_stops_it(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        async with await provider.connect(info.id) as guest:
            await guest.call("shutdown")
        stopped = await _wait_status(provider, info.id, "stopped", self.patience)
        assert stopped.status == "stopped"

    async def test_destroy_leaves_nothing(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        procs = host.process_tree(info.id)
        assert procs, "the host should see the sandbox's processes before destroy"
        await provider.destroy(info.id)
        assert host.alive(procs) == set(), host.commands(host.alive(procs))
        assert host.process_tree(info.id) == set()
        assert host.mounts_mentioning(info.id) == []
        assert not await anyio.Path(info.shared_dir).exists()
        assert info.id not in [item.id for item in await provider.list()]
        with pytest.raises(SandboxNotFound):
            await provider.info(info.id)

    async def test_unknown_ids_raise_not_found(self, provider: SandboxProvider) -> None:
        for call in (provider.destroy, provider.info, provider.start, provider.stop):
            with pytest.raises(SandboxNotFound):
                await call(UNKNOWN_ID)
        with pytest.raises(SandboxNotFound):
            await provider.connect(UNKNOWN_ID)

    async def test_usage_follows_cpu_memory_processes_and_disk(
        self, provider: SandboxProvider
    ) -> None:
        info = await provider.create(self.spec)
        idle = await provider.usage(info.id)
        assert idle.sandbox_id == info.id
        assert idle.processes >= 2 and 0 < idle.memory_pss_mb <= idle.memory_rss_mb, idle
        async with await provider.connect(info.id) as guest:
            # A fixed amount of work, so the CPU time it takes does not depend on the load.
            await sh_out(guest, "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done")
            burnt = await provider.usage(info.id)
            assert burnt.cpu_seconds >= idle.cpu_seconds + 0.2, (idle, burnt)
            if self.host_sees_guest_processes:
                await sh_out(guest, "sleep 600 >/dev/null 2>&1 &")
                await _wait_usage(
                    provider, info.id, lambda u: u.processes > idle.processes, self.patience
                )
            if self.host_sees_guest_memory:
                await self._fill_memory(provider, guest, info.id, idle)
            # sync: a VM's writes reach its disk image from its own page cache
            await sh_out(guest, "head -c 50000000 /dev/urandom > ~/big.bin; sync")
            written = await provider.usage(info.id)
            assert written.disk_used_mb >= idle.disk_used_mb + 40, (idle, written)
        await provider.stop(info.id)
        stopped = await provider.usage(info.id)
        assert (stopped.cpu_seconds, stopped.memory_rss_mb, stopped.memory_pss_mb) == (0, 0, 0)
        assert stopped.processes == 0
        assert stopped.disk_used_mb >= idle.disk_used_mb + 40  # its files stay when stopped

    async def _fill_memory(
        self, provider: SandboxProvider, guest: GuestClient, sandbox_id: str, idle: SandboxUsage
    ) -> None:
        await sh_out(
            guest,
            'python3 -c \'import time; b = b"x" * (200 << 20); print(flush=True); '
            "time.sleep(600)' >/dev/null 2>&1 &",
        )
        # The 200 MiB fill is gradual: wait until both measures have seen most of it (a
        # sample taken mid-fill once showed RSS +153 but PSS +149).
        await _wait_usage(
            provider,
            sandbox_id,
            lambda u: (
                u.memory_rss_mb >= idle.memory_rss_mb + 150
                and u.memory_pss_mb >= idle.memory_pss_mb + 150
            ),
            self.patience,
        )

    async def test_usage_of_unknown_id_raises_not_found(self, provider: SandboxProvider) -> None:
        with pytest.raises(SandboxNotFound):
            await provider.usage(UNKNOWN_ID)

    async def test_destroy_twice_raises_not_found(self, provider: SandboxProvider) -> None:
        info = await provider.create(self.spec)
        await provider.destroy(info.id)
        with pytest.raises(SandboxNotFound):
            await provider.destroy(info.id)


async def _wait_usage(
    provider: SandboxProvider,
    sandbox_id: str,
    ready: Callable[[SandboxUsage], bool],
    patience: float = 15.0,
) -> SandboxUsage:
    for _ in range(int(patience / 0.05)):
        usage = await provider.usage(sandbox_id)
        if ready(usage):
            return usage
        await anyio.sleep(0.05)
    raise AssertionError(f"{sandbox_id}: usage never reached the expected state: {usage}")


async def _wait_status(
    provider: SandboxProvider, sandbox_id: str, status: str, patience: float = 15.0
) -> SandboxInfo:
    for _ in range(int(patience / 0.05)):
        info = await provider.info(sandbox_id)
        if info.status == status:
            return info
        await anyio.sleep(0.05)
    raise AssertionError(f"{sandbox_id} is still {info.status} ({info.detail}), not {status}")
