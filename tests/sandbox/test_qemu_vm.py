"""Real VMs from a real template: QEMU (TCG here, KVM where it works), the guest agent over
virtio-serial, /shared over virtio-fs. One worker runs them all (xdist group): the first
VM of a shape boots (~12 s under TCG) and saves the template's warm state, the others
start from it in under a second. What every provider must do (stop/start, shutdown, destroy) is
test_qemu_conformance.py's; here what is a VM's own: its kernel, the channel multiplexer,
warm starts, snapshots, restore, fork and reboot."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.errors import ConfigError, NotFound, SandboxError, SandboxNotFound
from hivecell.sandbox import supervised
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local.zygote import launch
from hivecell.sandbox.qemu import warm
from hivecell.sandbox.qemu.provider import QemuProvider
from hivecell.sandbox.router import ProviderRouter
from tests.sandbox import host, qemu_env
from tests.sandbox.host import sh_out

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
    with qemu_env.scratch_home("hc-vm-") as path:
        yield path


@pytest.fixture(scope="module")
async def provider(vm_home: Path) -> AsyncIterator[QemuProvider]:
    async with qemu_env.vms(vm_home) as made:
        yield made


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


async def test_a_vms_supervisor_is_forked_by_the_supervisor_server(
    provider: QemuProvider, vm: SandboxInfo
) -> None:
    """Its imports are done once per host (~60 ms of every warm start otherwise), and it
    gets none of the caller's environment."""
    await anyio.to_thread.run_sync(_check_forked, Path(vm.shared_dir).parent)


def _check_forked(root: Path) -> None:
    pid = json.loads((root / "meta.json").read_text())["supervisor_pid"]
    assert supervised.alive("hivecell.sandbox.qemu.supervisor", root, pid)
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert Path(f"/proc/{parent}/cmdline").read_bytes().startswith(b"hivecell-supervisors")
    environ = set(filter(None, Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")))
    assert environ == {f"{k}={v}".encode() for k, v in launch.SUPERVISOR_ENV.items()}


async def test_unknown_and_hostile_ids(provider: QemuProvider) -> None:
    for bad in ("vm-00000000", "../vms/x", "sb-12345678", "vm-../../etc"):
        for call in (provider.info, provider.start, provider.stop, provider.destroy):
            with pytest.raises(SandboxNotFound):
                await call(bad)


async def test_an_offline_vm_has_no_network_device(vm: SandboxInfo, provider: QemuProvider) -> None:
    async with await provider.connect(vm.id) as guest:
        assert (await sh_out(guest, "ls /sys/class/net")).split() == ["lo"]
        probe = "python3 -c 'import socket; socket.create_connection((\"198.51.100.10\", 80), 3)'"
        result = await host.shell(guest, probe)
        assert result["exit_code"] != 0 and "Network is unreachable" in result["stderr"]


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


# --- warm starts, snapshots, restore, fork -------------------------------------------------


async def _urandom(provider: QemuProvider, sandbox_id: str) -> str:
    async with await provider.connect(sandbox_id) as guest:
        return await sh_out(guest, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")


async def test_vms_start_from_the_templates_warm_state_as_themselves(
    provider: QemuProvider, vm: SandboxInfo
) -> None:
    """Every VM of a shape is restored from one saved boot: each still gets its own
    hostname, the present time and its own randomness (none repeats a sibling's)."""
    twin = await provider.create(SPEC)
    try:
        for info in (vm, twin):
            meta = json.loads((Path(info.shared_dir).parent / "meta.json").read_text())
            assert meta["warm"], meta  # started from the warm state, not booted
            # and registered on it: no other hivecell version prunes it from under the VM
            template = provider.templates.get(provider.template)
            users = warm.state_for(template, meta["warm"]).in_use()
            assert any(user.startswith(info.id) for user in users), users
            async with await provider.connect(info.id) as guest:
                assert (await sh_out(guest, "hostname")).strip() == info.id
                guest_now = float(await sh_out(guest, "date +%s.%N"))
            assert abs(guest_now - time.time()) < 30  # not the moment the state was saved
        assert await _urandom(provider, vm.id) != await _urandom(provider, twin.id)
        # a clone holds the RAM its state saved (free pages were ballooned out before), not
        # all 1024 MiB it was given; and the desktop works
        usage = await provider.usage(twin.id)
        assert usage.memory_pss_mb < 600, usage
        async with await provider.connect(twin.id) as guest:
            shot = await guest.call("screenshot", {"format": "png"})
            assert host.png_bytes(shot).startswith(PNG_MAGIC)
    finally:
        await provider.destroy(twin.id)


async def test_snapshot_and_restore_bring_files_and_the_desktop_back(
    provider: QemuProvider,
) -> None:
    info = await provider.create(SPEC)
    shared = anyio.Path(info.shared_dir)
    async with await provider.connect(info.id) as guest:
        await sh_out(guest, "echo one > ~/note.txt")
        await guest.call("open_app", {"name": "xterm", "window_timeout": 60})
        # a client stays connected across the snapshot: the saved guest has a channel open
        async with await provider.connect(info.id) as other:
            made = await provider.snapshot(info.id, "first")
            assert (made.name, made.sandbox_id) == ("first", info.id)
            assert made.size_bytes > 0
            assert (await other.call("ping"))["pong"] is True  # it kept running
        await sh_out(guest, "echo two > ~/note.txt; pkill -x xterm; true")
    await (shared / "outbox" / "after.txt").write_text("host file\n")
    with pytest.raises(ConfigError, match="already has a snapshot"):
        await provider.snapshot(info.id, "first")
    for bad in ("../x", "", ".hidden", "a/b", "x" * 65):
        with pytest.raises(ConfigError):
            await provider.snapshot(info.id, bad)
    with pytest.raises(NotFound):
        await provider.restore(info.id, "never")

    assert (await provider.restore(info.id, "first")).status == "running"
    async with await provider.connect(info.id) as guest:
        assert await sh_out(guest, "cat ~/note.txt") == "one\n"
        windows = (await guest.call("list_windows"))["windows"]
        assert any("xterm" in (w["app"] + w["title"]).lower() for w in windows), windows
        # /shared is the host's folder: a restore leaves it as the host has it
        assert await sh_out(guest, "cat /shared/outbox/after.txt") == "host file\n"
        assert (await sh_out(guest, "hostname")).strip() == info.id
    assert [s.name for s in await provider.snapshots(info.id)] == ["first"]
    await provider.delete_snapshot(info.id, "first")
    assert await provider.snapshots(info.id) == []
    procs = host.process_tree(info.id)
    await provider.destroy(info.id)
    assert host.alive(procs) == set(), host.commands(host.alive(procs))


async def test_a_tampered_snapshot_fails_its_restore_with_the_reason(
    provider: QemuProvider,
) -> None:
    """A snapshot whose RAM file is gone (an older hivecell's, a hand edit) is refused
    before the VM it would replace is stopped; one cut short (a full disk) fails its
    restore naming the file and what is wrong, and leaves no VM running."""
    info = await provider.create(SPEC)
    try:
        snapshots = Path(info.shared_dir).parent / "snapshots"
        await provider.snapshot(info.id, "gone")
        (snapshots / "gone" / "state.ram").unlink()
        with pytest.raises(ConfigError, match="has no RAM file"):
            await provider.restore(info.id, "gone")
        async with await provider.connect(info.id) as guest:  # still running, untouched
            assert (await guest.call("ping"))["pong"] is True
        await provider.snapshot(info.id, "cut")
        saved = snapshots / "cut" / "state.ram"
        os.truncate(saved, saved.stat().st_size // 2)
        with pytest.raises(SandboxError, match=r"state\.ram is of a VM with 512 MiB, not 1024"):
            await provider.restore(info.id, "cut")
        assert (await provider.info(info.id)).status != "running"
    finally:
        procs = host.process_tree(info.id)
        await provider.destroy(info.id)
        assert host.alive(procs) == set(), host.commands(host.alive(procs))


async def test_fork_makes_an_independent_vm_from_the_current_state(
    provider: QemuProvider, vm: SandboxInfo
) -> None:
    shared = Path(vm.shared_dir)
    async with await provider.connect(vm.id) as guest:
        await sh_out(guest, "echo parent > ~/fork-note.txt; echo out > /shared/outbox/o.txt")
    (shared / "workspace" / "escape").symlink_to("/etc/passwd")  # as a hostile guest would
    child = await provider.fork(vm.id)
    try:
        assert child.id != vm.id and child.status == "running"
        async with await provider.connect(child.id) as guest:
            assert await sh_out(guest, "cat ~/fork-note.txt /shared/outbox/o.txt") == (
                "parent\nout\n"
            )
            assert (await sh_out(guest, "hostname")).strip() == child.id
            await sh_out(guest, "echo child > ~/fork-note.txt")
        async with await provider.connect(vm.id) as guest:
            assert await sh_out(guest, "cat ~/fork-note.txt") == "parent\n"
        copied = Path(child.shared_dir) / "workspace" / "escape"
        assert not copied.exists() and not copied.is_symlink()  # links are not followed
    finally:
        (shared / "workspace" / "escape").unlink()
        await provider.destroy(child.id)


async def test_local_sandboxes_refuse_snapshots_clearly(provider: QemuProvider) -> None:
    router = ProviderRouter(provider.home, "local")
    for call in (
        lambda: router.snapshot("sb-12345678", "x"),
        lambda: router.restore("sb-12345678", "x"),
        lambda: router.fork("sb-12345678"),
    ):
        with pytest.raises(ConfigError, match="--provider qemu"):
            await call()


async def test_reboot_really_reboots_and_the_agent_comes_back(provider: QemuProvider) -> None:
    info = await provider.create(SPEC)
    async with await provider.connect(info.id) as guest:
        await sh_out(guest, "echo kept > ~/note.txt; touch /tmp/gone")
        boot_id = await sh_out(guest, "cat /proc/sys/kernel/random/boot_id")
        await guest.call("reboot")
        lost = await guest.wait_lost()  # the old connection ends; it does not hang
    assert "lost" in lost
    for _ in range(3600):  # a TCG boot: wait on the agent answering, not on a clock
        if await supervised.pings(Path(info.guest_socket or "")):
            break
        await anyio.sleep(0.05)
    async with await provider.connect(info.id) as guest:
        assert await sh_out(guest, "cat /proc/sys/kernel/random/boot_id") != boot_id
        # the disk kept its files, the tmpfs was made afresh
        assert await sh_out(guest, "cat ~/note.txt; test -e /tmp/gone || echo new") == "kept\nnew\n"
        assert await sh_out(guest, "mount | grep -c ' /shared '") == "1\n"
    assert (await provider.info(info.id)).status == "running"
    await provider.destroy(info.id)
