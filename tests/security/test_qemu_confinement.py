"""What a guest that escapes into QEMU would hold: QEMU is started by root (it must open the
template, the overlay, the sockets), then runs as a uid of its own with no capability, so
the escape can open none of the host's files, not even its own VM's; and it cannot outlive
its supervisor (the kernel clears PR_SET_PDEATHSIG on the uid change: its PID namespace's
init keeps it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local import uidpool
from hivecell.sandbox.qemu import provider as qemu_provider
from hivecell.sandbox.qemu import vm
from hivecell.sandbox.qemu.layout import VmLayout
from hivecell.sandbox.qemu.provider import QemuProvider, VmMeta
from tests.sandbox import qemu_env
from tests.sandbox.host import sh_out

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.xdist_group("qemu"),
    pytest.mark.timeout(1800),  # the first VM test of a run may build the template
]
SPEC = SandboxSpec(width=800, height=600, memory_mb=1024, cpus=1)  # test_qemu_vm's warm state


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def vm_home() -> Iterator[Path]:
    with qemu_env.scratch_home("hc-vmsec-") as path:
        path.chmod(0o755)  # a home anyone may enter: what keeps QEMU's uid out must be our own
        yield path


@pytest.fixture(scope="module")
async def provider(vm_home: Path) -> AsyncIterator[QemuProvider]:
    async with qemu_env.vms(vm_home) as made:
        yield made


def _meta(provider: QemuProvider, sandbox_id: str) -> tuple[VmLayout, VmMeta]:
    layout = VmLayout.of(provider.home, sandbox_id)
    meta = qemu_provider._load(layout)
    assert meta is not None and meta.supervisor_pid is not None
    return layout, meta


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


CAP_DAC_OVERRIDE, CAP_MKNOD, CAP_SETFCAP = 1 << 1, 1 << 27, 1 << 31


def _virtiofsd_children(layout: VmLayout) -> list[int]:
    """The virtiofsd processes serving ``layout`` that run in its sandbox (a PID namespace of
    their own); their parent only waits."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            nspid = _status(int(proc.name)).get("NSpid", "").split()
        except OSError:
            continue
        if f"--socket-path={layout.virtiofs_socket}".encode() in argv and len(nspid) > 1:
            found.append(int(proc.name))
    return found


def _as_uid(uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` with exactly what an escape from QEMU would have: its uid, no group, no cap."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    return subprocess.run([*drop, "--", *argv], capture_output=True, text=True, check=False)


async def test_qemu_runs_as_a_uid_of_its_own_that_reaches_no_host_file(
    provider: QemuProvider,
) -> None:
    info: SandboxInfo = await provider.create(SPEC)
    layout, meta = _meta(provider, info.id)
    uid = meta.qemu_uid
    assert uid is not None and uidpool.in_range(uid)
    assert (uidpool.REGISTRY / str(uid)).read_text() == str(layout.root.resolve())
    qemu = vm.find_qemu(meta.supervisor_pid or 0)
    assert qemu is not None
    status = _status(qemu)
    assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split() == [str(uid)] * 4
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    # An escape can read or write none of it: the VM's own disk and log, the template's disk
    # and kernel, nor make anything in the home. Their folders keep it out, wherever the
    # home and the template store lie (this home is open to all; CI's cache folder is 0755).
    template = provider.templates.get(provider.template)
    assert layout.root.stat().st_mode & 0o777 == 0o700
    assert template.root.resolve().parent.stat().st_mode & 0o077 == 0
    for path in (layout.disk, layout.log, template.disk, template.kernel):
        tried = _as_uid(uid, "cat", str(path))
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, (path, tried)
    tried = _as_uid(uid, "touch", str(provider.home / "planted"))
    assert tried.returncode != 0 and not (provider.home / "planted").exists()
    # /shared's file server keeps root's file capabilities, but not those to make device
    # nodes or set file capabilities in the host's folder
    servers = _virtiofsd_children(layout)
    assert servers, "no virtiofsd serves this VM's /shared"
    for pid in servers:
        held = int(_status(pid)["CapEff"], 16)
        assert held & CAP_DAC_OVERRIDE and not held & (CAP_MKNOD | CAP_SETFCAP), hex(held)
    # ...and the VM works as before: its disk (reopened after the restore) takes writes and
    # /shared (whose socket QEMU no longer reaches) is served.
    async with await provider.connect(info.id) as guest:
        await sh_out(guest, "echo kept > ~/note.txt && sync && echo out > /shared/outbox/o.txt")
        assert await sh_out(guest, "cat ~/note.txt") == "kept\n"
    assert (layout.shared / "outbox" / "o.txt").read_text() == "out\n"
    await provider.destroy(info.id)
    assert not (uidpool.REGISTRY / str(uid)).exists()  # given back


async def test_a_killed_supervisor_takes_qemu_with_it(provider: QemuProvider) -> None:
    info = await provider.create(SPEC)
    _, meta = _meta(provider, info.id)
    supervisor = meta.supervisor_pid or 0
    qemu = vm.find_qemu(supervisor)
    assert qemu is not None and qemu != supervisor
    started = _start_time(qemu)
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 60  # bounds a hang; the kernel kills it at once
    while _start_time(qemu) == started:  # still that process (a zombie counts as gone)
        assert time.monotonic() < deadline, "QEMU outlived its supervisor"
        await anyio.sleep(0.05)
    assert (await provider.info(info.id)).status != "running"
    await provider.destroy(info.id)
    uid = meta.qemu_uid
    assert uid is not None and not (uidpool.REGISTRY / str(uid)).exists()


def _start_time(pid: int) -> str | None:
    """The process's start time while it runs (None once it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return None if fields[0] == "Z" else fields[19]
