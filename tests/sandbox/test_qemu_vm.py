"""Real VMs from a real template: QEMU (TCG here, KVM where it works), the guest agent over
virtio-serial, /shared over virtio-fs. One worker runs them all (xdist group): each boot
takes a core for ~15-40 s. Two VMs: one shared by the read-mostly checks, one for the
lifecycle (stop, start, shutdown, destroy)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.errors import ConfigError, SandboxError, SandboxNotFound
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.qemu.provider import QemuProvider
from hivecell.sandbox.router import ProviderRouter
from tests.sandbox import host
from tests.sandbox.host import sh_out
from tests.sandbox.qemu_env import cache_dir, ci_template

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.xdist_group("qemu"),
    pytest.mark.timeout(1800),  # the first test may build the template (minutes)
]
SPEC = SandboxSpec(width=800, height=600, memory_mb=1024, cpus=1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def vm_home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hc-vm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def provider(vm_home: Path) -> AsyncIterator[QemuProvider]:
    template = await anyio.to_thread.run_sync(ci_template)
    made = QemuProvider(
        vm_home,
        template=template.manifest.name,
        templates_dir=template.root.parent,
        cache_dir=cache_dir().parent / "qemu",
    )
    yield made
    for info in await made.list():
        await made.destroy(info.id)


@pytest.fixture(scope="module")
async def vm(provider: QemuProvider) -> SandboxInfo:
    return await provider.create(SPEC)


async def test_the_guest_is_a_vm_with_the_templates_kernel(
    provider: QemuProvider, vm: SandboxInfo
) -> None:
    assert (vm.status, vm.provider, vm.id[:3]) == ("running", "qemu", "vm-")
    template = provider.templates.get(provider.template)
    async with await provider.connect(vm.id) as guest:
        release = (await sh_out(guest, "uname -r")).strip()
        assert (await sh_out(guest, "id -un; echo $HOME")) == "user\n/home/user\n"
        # PID 1 is the VM's init (tini), not a host process
        assert "tini" in await sh_out(guest, "cat /proc/1/cmdline | tr '\\0' ' '")
    assert release == template.manifest.kernel
    assert release != os.uname().release
    assert "tcg" in vm.detail or "kvm" in vm.detail  # which accelerator, and why


async def test_shared_folders_work_both_ways(provider: QemuProvider, vm: SandboxInfo) -> None:
    shared = anyio.Path(vm.shared_dir)
    await (shared / "inbox" / "from-host.txt").write_text("hello vm\n")
    async with await provider.connect(vm.id) as guest:
        assert await sh_out(guest, "ls /shared") == "inbox\noutbox\nworkspace\n"
        assert await sh_out(guest, "cat /shared/inbox/from-host.txt") == "hello vm\n"
        await sh_out(guest, "echo hello host > /shared/outbox/from-vm.txt")
        # a link the guest plants points into the guest's own tree, never the host's
        await sh_out(guest, "ln -s /etc/hostname /shared/outbox/link")
    assert await (shared / "outbox" / "from-vm.txt").read_text() == "hello host\n"
    assert await (shared / "outbox" / "link").readlink() == anyio.Path("/etc/hostname")


async def test_desktop_screenshot_and_vnc(provider: QemuProvider, vm: SandboxInfo) -> None:
    assert vm.vnc_endpoint is not None
    async with await provider.connect(vm.id) as guest:
        shot = await guest.call("screenshot", {"format": "png"})
        assert (shot["screen_width"], shot["screen_height"]) == (800, 600)
        assert host.png_bytes(shot).startswith(PNG_MAGIC)
        windows = await guest.call("list_windows")
        assert isinstance(windows["windows"], list)
        await guest.call("start_vnc")
        assert (await host.read_banner(vm.vnc_endpoint, 12)).startswith(b"RFB 003.")
        await guest.call("stop_vnc")


async def test_many_clients_share_the_one_agent_port(
    provider: QemuProvider, vm: SandboxInfo
) -> None:
    async def ping_a_few(results: list[bool]) -> None:
        async with await provider.connect(vm.id) as guest:
            for _ in range(3):
                results.append((await guest.call("ping"))["pong"])

    results: list[bool] = []
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(ping_a_few, results)
    assert results == [True] * 24


async def test_usage_and_listing(provider: QemuProvider, vm: SandboxInfo) -> None:
    usage = await provider.usage(vm.id)
    assert usage.processes >= 2 and usage.cpu_seconds > 0, usage
    assert 0 < usage.memory_pss_mb <= usage.memory_rss_mb
    listed = {info.id: info for info in await provider.list()}
    assert listed[vm.id].status == "running"
    # every command that names a sandbox finds a VM by its id, whatever provider it asked for
    router = ProviderRouter(provider.home, "local")
    router._providers["qemu"] = provider  # this test's templates and caches
    assert (await router.info(vm.id)).provider == "qemu"
    assert vm.id in [info.id for info in await router.list()]


async def test_unknown_and_hostile_ids(provider: QemuProvider) -> None:
    for bad in ("vm-00000000", "../vms/x", "sb-12345678", "vm-../../etc"):
        for call in (provider.info, provider.start, provider.stop, provider.destroy):
            with pytest.raises(SandboxNotFound):
                await call(bad)


async def test_network_other_than_offline_is_refused_clearly(provider: QemuProvider) -> None:
    with pytest.raises(ConfigError, match="offline"):
        await provider.create(SandboxSpec(network="nat"))


async def test_stop_start_shutdown_and_destroy(provider: QemuProvider) -> None:
    info = await provider.create(SPEC)
    async with await provider.connect(info.id) as guest:
        await sh_out(guest, "echo kept > ~/note.txt; echo kept > /shared/workspace/w.txt")
    assert (await provider.stop(info.id)).status == "stopped"
    assert (await provider.stop(info.id)).status == "stopped"  # idempotent
    with pytest.raises(SandboxError):
        await provider.connect(info.id)
    assert (await provider.start(info.id)).status == "running"
    procs = host.process_tree(info.id)
    assert any("qemu-system" in cmd for cmd in host.commands(procs)), host.commands(procs)
    async with await provider.connect(info.id) as guest:
        assert await sh_out(guest, "cat ~/note.txt /shared/workspace/w.txt") == "kept\nkept\n"
        await guest.call("shutdown")
    await _wait_status(provider, info.id, "stopped")
    await provider.destroy(info.id)
    assert host.alive(procs) == set(), host.commands(host.alive(procs))
    assert not await anyio.Path(info.shared_dir).exists()
    with pytest.raises(SandboxNotFound):
        await provider.info(info.id)
    with pytest.raises(SandboxNotFound):
        await provider.destroy(info.id)


async def _wait_status(provider: QemuProvider, sandbox_id: str, status: str) -> None:
    """The VM powers off by itself: wait on its state (the supervisor's exit), not a clock."""
    for _ in range(1200):
        if (await provider.info(sandbox_id)).status == status:
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"{sandbox_id} never became {status}")


async def test_a_guest_that_garbles_its_agent_port_stops_only_itself(
    provider: QemuProvider, vm: SandboxInfo
) -> None:
    """A hostile model kills its own agent and writes junk frames to the freed port: the
    host's end refuses the protocol and that VM stops with an error; the neighbour VM
    (``vm``) keeps answering."""
    info = await provider.create(SPEC)
    async with await provider.connect(info.id) as guest:
        await sh_out(
            guest,
            "nohup sh -c 'sleep 1; pkill -KILL -f hivecell.guest.boot; "
            'while :; do printf "\\377\\377\\377\\377\\377junkjunkjunk" '
            "> /dev/virtio-ports/org.hivecell.agent.0 && break; done' >/dev/null 2>&1 &",
        )
    for _ in range(2400):
        current = await provider.info(info.id)
        if current.status != "running":
            break
        await anyio.sleep(0.05)
    assert current.status in ("error", "stopped"), current
    async with await provider.connect(vm.id) as neighbour:
        assert (await neighbour.call("ping"))["pong"] is True
    log = (Path(info.shared_dir).parent / "sandbox.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]  # the supervisor handled it, never crashed
    procs = host.process_tree(info.id)
    await provider.destroy(info.id)
    assert host.alive(procs) == set()


async def test_a_vm_running_another_hivecells_agent_says_how_to_update_it(
    provider: QemuProvider, vm: SandboxInfo
) -> None:
    assert "another hivecell" not in (await provider.info(vm.id)).detail
    meta = Path(vm.shared_dir).parent / "meta.json"
    saved = meta.read_text()
    record = json.loads(saved)
    record["guest_version"] = "0123456789abcdef"  # as if started before an upgrade
    meta.write_text(json.dumps(record))
    try:
        assert "stop and start it" in (await provider.info(vm.id)).detail
    finally:
        meta.write_text(saved)
