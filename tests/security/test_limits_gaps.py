"""Resource limits without gaps, tried from inside real sandboxes as an attacker would.

Scratch tmpfs mounts are sized and the rest of the box's root is read-only; home, /shared and
/run/hivecell share one disk cap that the host enforces (a write past it fails with ENOSPC,
the host's disk never takes more than the cap); destroy leaves no mount or loop device even
after the supervisor was SIGKILLed; a CPU ceiling holds; every cgroup of a box sits in
hivecell's own subtree under the cgroup hivecell runs in; fork and thread bombs are capped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from anyio import to_thread

from hivecell.errors import GuestUnavailable
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local import disk, state, supervisor
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.conftest import short_tmp
from tests.sandbox.host import alive, process_tree, shell, wait_all_gone

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MIB = 1 << 20
NO_SPACE = "No space left on device"
# Writes up to SIZE MiB into PATH in 1 MiB chunks; prints how many MiB it got and the error.
FILL = r"""python3 -c '
import sys
path, size = sys.argv[1], int(sys.argv[2])
done, error = 0, "none"
try:
    with open(path, "wb") as out:
        for _ in range(size):
            out.write(b"x" * (1 << 20))
            out.flush()
            done += 1
except OSError as exc:
    error = exc.strerror
print(done, error, sep=":")
' """
# Two processes burn CPU for WINDOW seconds of wall time; prints their CPU seconds and the wall.
BURN = r"""python3 -c '
import os, resource, time
window, start, kids = 3.0, time.monotonic(), []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while time.monotonic() < start + window:
            pass
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime, time.monotonic() - start)
'"""
# Starts threads (each one counts as a task for the pids controller) until refused.
THREAD_BOMB = r"""python3 -c '
import threading, time
stop, count = threading.Event(), 0
try:
    while count < 2000:
        threading.Thread(target=stop.wait, daemon=True).start()
        count += 1
except RuntimeError as exc:
    print("refused:", exc)
print(count)
stop.set()
'"""


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_tmp("hc-lim-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def provider(home: Path, pycache: Path) -> AsyncIterator[LocalProvider]:
    made = LocalProvider(home, pycache=pycache)
    yield made
    for info in await made.list():
        await made.destroy(info.id)


@pytest.fixture(scope="module")
def pycache() -> Iterator[Path]:
    path = short_tmp("hc-lim-pyc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _fill(guest: GuestClient, path: str, mib: int) -> tuple[int, str]:
    result = await shell(guest, f"{FILL} {path} {mib}", timeout=120)
    done, _, error = result["stdout"].strip().partition(":")
    return int(done), error


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def _loop_devices_listing() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout


# --- tmpfs and the box's root ---------------------------------------------------------------
async def test_scratch_tmpfs_fill_stops_at_its_size(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec(tmpfs_mb=16))
    async with await provider.connect(info.id) as guest:
        for scratch in ("/tmp", "/dev/shm", "/var/tmp"):
            done, error = await _fill(guest, f"{scratch}/fill", 64)
            assert (done <= 16, error) == (True, NO_SPACE), scratch
            await shell(guest, f"rm -f {scratch}/fill")
        assert (await guest.call("ping"))["pong"] is True


async def test_the_root_and_dev_tmpfs_are_read_only(provider: LocalProvider) -> None:
    # bwrap's own tmpfs for / and /dev cannot be sized: writable, a box fills host RAM there.
    info = await provider.create(SandboxSpec())
    async with await provider.connect(info.id) as guest:
        for path in ("/fill", "/run/fill", "/var/fill", "/dev/fill", "/opt/fill"):
            done, error = await _fill(guest, path, 8)
            assert (done, error) == (0, "Read-only file system"), path


# --- the disk cap ---------------------------------------------------------------------------
async def test_writes_past_the_disk_cap_fail_and_the_host_keeps_its_space(
    provider: LocalProvider,
) -> None:
    cap = 64
    info = await provider.create(SandboxSpec(disk_mb=cap))
    layout = Layout.of(provider.home, info.id)
    assert "disk=image" in info.detail
    async with await provider.connect(info.id) as guest:
        home, error = await _fill(guest, "/home/user/big", 2 * cap)
        assert error == NO_SPACE and cap // 2 < home < cap
        await shell(guest, "rm /home/user/big")
        first, error = await _fill(guest, "/shared/workspace/big", 2 * cap)
        assert error == NO_SPACE and cap // 2 < first < cap
        # home, /shared and /run/hivecell share the one cap: it is full now for all three
        for path in ("/home/user/more", "/shared/outbox/more", "/run/hivecell/more"):
            assert await _fill(guest, path, cap) == (0, NO_SPACE), path
        assert (await guest.call("ping"))["pong"] is True  # only the writes failed
    # The host side: the image never holds more host blocks than the cap, and nothing the
    # box wrote landed outside it.
    assert layout.disk_image.stat().st_blocks * 512 <= cap * MIB
    outside = sum(
        p.stat().st_blocks * 512
        for p in layout.root.rglob("*")
        if p.is_file() and not p.is_relative_to(layout.disk) and p != layout.disk_image
    )
    assert outside < 2 * MIB
    big = Path(info.shared_dir) / "workspace" / "big"  # shared_dir: where /shared really is
    assert big.stat().st_size == first * MIB


async def test_a_stopped_boxs_shared_folder_stays_readable(provider: LocalProvider) -> None:
    # The task service collects the outbox after stopping the box: the image stays mounted.
    info = await provider.create(SandboxSpec(disk_mb=64))
    async with await provider.connect(info.id) as guest:
        await shell(guest, "echo result > /shared/outbox/answer.txt")
    await provider.stop(info.id)
    assert (Path(info.shared_dir) / "outbox" / "answer.txt").read_text() == "result\n"
    restarted = await provider.start(info.id)
    async with await provider.connect(restarted.id) as guest:
        assert (await shell(guest, "cat /shared/outbox/answer.txt"))["stdout"] == "result\n"


async def test_destroy_leaves_no_mount_or_loop_device_after_sigkill(
    provider: LocalProvider,
) -> None:
    info = await provider.create(SandboxSpec(disk_mb=64))
    layout = Layout.of(provider.home, info.id)
    meta = state.load(layout)
    assert meta is not None and meta.supervisor_pid is not None
    assert disk.is_mounted(layout.disk) and str(layout.disk_image) in _loop_devices_listing()
    box, supervisor = process_tree(str(layout.root)), meta.supervisor_pid
    os.kill(supervisor, signal.SIGKILL)  # no cleanup of its own
    assert not await to_thread.run_sync(wait_all_gone, {p for p in box if p[0] == supervisor})
    await provider.destroy(info.id)
    assert not layout.root.exists()
    assert str(layout.root) not in _mountinfo()
    assert str(layout.root) not in _loop_devices_listing()
    assert disk.loop_devices(layout.disk_image) == []
    assert box and not alive(box)


async def test_without_loop_mounts_a_box_over_its_cap_is_stopped(home: Path, pycache: Path) -> None:
    # The fallback for hosts where hivecell is not root: per-file RLIMIT_FSIZE, and the
    # supervisor measuring the folder. Forced here with disk_backend="watch".
    provider = LocalProvider(home, pycache=pycache, disk_backend="watch")
    cap = 32
    info = await provider.create(SandboxSpec(disk_mb=cap))
    assert "disk=watch" in info.detail
    try:
        async with await provider.connect(info.id) as guest:
            # RLIMIT_FSIZE holds everywhere, also on tmpfs (where it does not count to the cap)
            assert await _fill(guest, "/tmp/one", 2 * cap) == (cap, "File too large")
            for path in ("/home/user/two", "/shared/workspace/three"):  # 24 of 32 MiB
                assert await _fill(guest, path, 12) == (12, "none")
        try:  # together over the cap; the box may be stopped mid-call
            async with await provider.connect(info.id) as guest:
                await _fill(guest, "/home/user/four", 12)
        except* GuestUnavailable:
            pass
        with anyio.fail_after(30):
            while (current := await provider.info(info.id)).status == "running":  # noqa: ASYNC110 - another process decides
                await anyio.sleep(0.1)  # the supervisor measures every 2 s
        assert current.status == "error"
        assert current.detail.startswith("disk cap exceeded: the sandbox wrote")
    finally:
        await provider.destroy(info.id)


async def test_without_loop_mounts_hiding_files_from_the_measurement_stops_the_box(
    home: Path, pycache: Path
) -> None:
    provider = LocalProvider(home, pycache=pycache, disk_backend="watch")
    info = await provider.create(SandboxSpec(disk_mb=32))
    try:
        async with await provider.connect(info.id) as guest:
            await shell(guest, "mkdir /home/user/hidden /shared/workspace/hidden")
            for path in ("/home/user/hidden/a", "/shared/workspace/hidden/b"):
                assert await _fill(guest, path, 12) == (12, "none")
        try:
            async with await provider.connect(info.id) as guest:  # 24 MiB out of sight
                await shell(guest, "chmod 000 /home/user/hidden /shared/workspace/hidden")
                await _fill(guest, "/home/user/c", 12)  # together over the cap
        except* GuestUnavailable:
            pass
        with anyio.fail_after(30):
            while (current := await provider.info(info.id)).status == "running":  # noqa: ASYNC110 - another process decides
                await anyio.sleep(0.1)
        # As root the supervisor reads the folders anyway; as their owner it cannot.
        reasons = ("disk cap exceeded", "disk cap cannot be measured")
        assert current.detail.startswith(reasons), current.detail
    finally:
        await provider.destroy(info.id)


def test_an_unreadable_folder_cannot_hide_from_the_measurement(home: Path) -> None:
    # What the supervisor sees without root: run the measurement as an unprivileged user.
    folder = home / "disk"
    (folder / "hidden").mkdir(parents=True)
    (folder / "hidden" / "big").write_bytes(b"x" * MIB)
    (folder / "hidden").chmod(0)
    home.chmod(0o755)  # /tmp/hc-lim-*: reachable for nobody
    shutil.chown(folder, "nobody")
    shutil.chown(folder / "hidden", "nobody")
    probe = (
        "import sys; from pathlib import Path; from hivecell.sandbox.local import disk\n"
        "try:\n    print(disk.usage(Path(sys.argv[1])))\n"
        "except PermissionError as exc:\n    print('refused', exc.filename)\n"
    )
    src = Path(disk.__file__).parents[3]
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-I",
         "-c", f"import sys; sys.path.insert(0, {str(src)!r})\n{probe}", str(folder)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["refused", str(folder / "hidden")]


async def test_the_box_cannot_fill_the_host_through_its_log(provider: LocalProvider) -> None:
    # Every process in the box inherits bwrap's stdout/stderr, which was sandbox.log on the
    # host: reachable as /proc/1/fd/1 (pid 1 belongs to the box's user).
    info = await provider.create(SandboxSpec())
    log = Layout.of(provider.home, info.id).log
    async with await provider.connect(info.id) as guest:
        targets = await shell(guest, "readlink /proc/[0-9]*/fd/[12]")
        assert str(log) not in targets["stdout"]  # not even its host path shows
        flood = "for fd in 1 2; do head -c 48M /dev/zero > /proc/1/fd/$fd; done; echo done"
        assert (await shell(guest, flood, timeout=120))["stdout"] == "done\n"
        assert (await guest.call("ping"))["pong"] is True
    assert log.stat().st_size < supervisor.LOG_CAP_BYTES + MIB


# --- CPU ------------------------------------------------------------------------------------
def _box_cgroup(layout: Layout, controller: str) -> Path:
    plan = json.loads(layout.plan.read_text())
    files = [Path(f.rstrip("?")) for f, _ in plan["limits"]["settings"]]
    return next(f.parent for f in files if f.name.startswith(f"{controller}."))


async def test_a_cpu_ceiling_holds(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec(cpus=0.5))
    assert "cpu=cgroup" in info.detail
    cgroup = _box_cgroup(Layout.of(provider.home, info.id), "cpu")
    if (cgroup / "cpu.max").exists():
        assert (cgroup / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert (cgroup / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cgroup / "cpu.cfs_period_us").read_text().strip() == "100000"
    async with await provider.connect(info.id) as guest:
        result = await shell(guest, BURN, timeout=60)
    used, wall = map(float, result["stdout"].split())
    # Two busy processes could use 2 x wall on this host; the quota allows 0.5 x wall. Only
    # an upper bound: a loaded host gives less, never more.
    assert used <= 0.5 * wall * 1.2, (used, wall)


# --- where the cgroups are ------------------------------------------------------------------
def _cgroups(pid: int | str) -> dict[str, str]:
    """controller -> cgroup path of a process ("" for the v2 hierarchy)."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


async def test_box_processes_live_in_hivecells_own_subtree(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec())
    layout = Layout.of(provider.home, info.id)
    boot = [pid for pid, _ in process_tree(str(layout.root)) if "guest.boot" in _cmdline(pid)]
    assert boot, "no box process found"
    ours, box = _cgroups("self"), _cgroups(boot[0])
    # cgroup v1 (this project's CI host): one hierarchy per controller; v2: the one tree.
    controllers = ("memory", "pids", "cpu") if "memory" in ours else ("",)
    for controller in controllers:
        expected = f"{ours[controller].rstrip('/')}/hivecell/{info.id}"
        assert box[controller] == expected, controller  # never the hierarchy root


async def test_fork_and_thread_bombs_are_capped(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec(max_pids=64))
    async with await provider.connect(info.id) as guest:
        result = await shell(guest, THREAD_BOMB, timeout=60)
        refused, started = result["stdout"].splitlines()
        assert refused.startswith("refused:") and int(started) < 64
        assert (await guest.call("ping"))["pong"] is True
