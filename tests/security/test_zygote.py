"""The guest zygote (sandbox/local/zygote/): a root process that forks boot into every box.

A boot process forked into a box must be confined exactly as one bwrap exec'd there, the
zygote must refuse whatever is not a box started by root, its memory must hold nothing of
the host's, and its death must not take boxes along. Real boxes, real zygotes (each test
that kills or probes one starts its own, in a folder of its own, so boxes of other tests
never lose theirs).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.sandbox import supervised
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local import state
from hivecell.sandbox.local.layout import SUPERVISOR_MODULE, Layout
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.sandbox.local.zygote import client, launch, supervisors
from tests.agent.helpers import short_tmp
from tests.sandbox import host

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the zygote exists only as root"),
]
BOOT = "-m hivecell.guest.boot"
STATUS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
          "NoNewPrivs", "Seccomp", "Seccomp_filters")  # fmt: skip
NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
CANARY = "HIVECELL_ZYGOTE_CANARY"


@pytest.fixture
def zygote_dir() -> Iterator[Path]:
    """A folder for a zygote of this test's own; it is killed afterwards."""
    folder = short_tmp("hc-zy-")
    yield folder
    for pid in _zygotes(folder) + _servers(folder):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def provider(
    zygote_dir: Path, pycache: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalProvider]:
    monkeypatch.setenv(CANARY, "host-secret")  # the caller's environment: API keys and all
    home = short_tmp("hc-")
    made = LocalProvider(home, pycache=pycache, zygote_dir=zygote_dir)
    yield made
    for info in await made.list():
        await made.destroy(info.id)
    shutil.rmtree(home, ignore_errors=True)


def _zygotes(folder: Path, title: str = client.TITLE) -> list[int]:
    return [pid for pid in host._all_pids() if host._cmdline(pid).startswith(
        f"{title} {folder}/")]  # fmt: skip


def _servers(folder: Path) -> list[int]:
    return _zygotes(folder, supervisors.TITLE)


def _box(sandbox_id: str) -> tuple[int, int]:
    """(boot, the box's init shell): boot is the zygote's child, not the shell's."""
    pids = {pid for pid, _ in host.process_tree(sandbox_id)}
    inits = [
        pid
        for pid in pids
        if host._cmdline(pid).startswith(client.BOX_INIT[0])
        and client.BOX_INIT[3] in host._cmdline(pid)
    ]
    boots = [
        pid
        for pid in pids
        if BOOT in host._cmdline(pid)
        and (parent := host._stat(pid)) is not None
        and host._cmdline(parent[0]).startswith(f"{client.TITLE} ")
    ]
    assert len(inits) == 1 and len(boots) == 1, [host._cmdline(pid) for pid in pids]
    return boots[0], inits[0]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines) if k in STATUS}


def _namespaces(pid: int) -> dict[str, str]:
    return {ns: str(Path(f"/proc/{pid}/ns/{ns}").readlink()) for ns in NAMESPACES}


def _check_confinement(sandbox_id: str, zygote_dir: Path) -> None:
    boot, init = _box(sandbox_id)
    assert _status(boot) == _status(init)
    assert _status(boot)["CapEff"] == "0000000000000000"
    assert _status(boot)["CapBnd"] == "0000000000000000"
    assert _status(boot)["NoNewPrivs"] == "1"
    assert _status(boot)["Seccomp"] == "2"
    assert _namespaces(boot) == _namespaces(init)
    assert _namespaces(boot)["user"] != str(Path("/proc/self/ns/user").readlink())
    cgroup = Path(f"/proc/{boot}/cgroup").read_text()
    assert cgroup == Path(f"/proc/{init}/cgroup").read_text()
    assert sandbox_id in cgroup
    # Nothing of the zygote's open files came along: only what boot was handed.
    links = [str(fd.readlink()) for fd in Path(f"/proc/{boot}/fd").iterdir()]
    assert not [link for link in links if "pidfd" in link]
    assert not [link for link in links if link.startswith("/") and link != "/dev/null"], links
    # The caller's environment reaches neither the zygote nor the box's boot.
    for pid in (boot, *_zygotes(zygote_dir)):
        assert CANARY.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert BOOT in host._cmdline(boot)  # ps shows what runs, not the zygote's command


async def test_boot_is_confined_exactly_as_bwraps_own_process(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec())
    await anyio.to_thread.run_sync(_check_confinement, info.id, provider.zygote_dir)


async def test_the_box_cannot_see_or_reach_the_zygote(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec())
    async with await provider.connect(info.id) as guest:
        seen = await host.sh_out(guest, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
        sockets = await host.sh_out(guest, "find / -xdev -type s 2>/dev/null; echo end")
    assert client.TITLE not in seen and "hivecell.guest.boot" in seen
    assert "zygote" not in sockets and str(provider.zygote_dir) not in sockets


def _send(plan: dict[str, object], payload: bytes, fds: list[int]) -> dict[str, object]:
    conn = client.connect(plan)
    with conn:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        conn.sendmsg([payload], rights)
        conn.settimeout(60)
        return json.loads(conn.recv(65536))


def _request(**override: object) -> bytes:
    request: dict[str, object] = {
        "argv": ["python3", "-S", "-m", "hivecell.guest.boot"],
        "env": {},
        "cwd": "/",
        "uid": 1000,
        "gid": 1000,
        "umask": 0o022,
        "cgroups": [],
    }
    return json.dumps(request | override).encode()


async def test_the_zygote_refuses_what_is_not_a_box(provider: LocalProvider) -> None:
    plan = provider.zygote_plan()
    assert plan is not None
    null = [os.open("/dev/null", os.O_RDONLY) for _ in range(5)]
    own = os.pidfd_open(os.getpid())  # a host process: joining it would be no box at all
    try:
        cases = {
            b"not json": [own, *null],
            _request(): [],
            _request(): null[:3],
            _request(uid=0, gid=0): [own, *null],
            _request(argv="python3"): [own, *null],
            _request(): [own, *null],
        }
        for payload, fds in cases.items():
            reply = await anyio.to_thread.run_sync(_send, plan, payload, fds)
            assert "error" in reply and "pid" not in reply, (payload, reply)
        reply = await anyio.to_thread.run_sync(_send, plan, _request(), [own, *null])
        assert "not a box" in str(reply["error"])
    finally:
        for fd in (own, *null):
            os.close(fd)
    # and it still boots real boxes
    info = await provider.create(SandboxSpec())
    async with await provider.connect(info.id) as guest:
        assert await host.sh_out(guest, "echo up") == "up\n"


def _connect_as_nobody(path: str) -> subprocess.CompletedProcess[str]:
    code = f"import socket; socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).connect({path!r})"
    return subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
         "/usr/bin/python3", "-c", code],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _check_only_root(plan: dict[str, object], zygote_dir: Path) -> None:
    sock = Path(str(plan["socket"]))
    assert sock.stat().st_mode & 0o777 == 0o600 and sock.stat().st_uid == 0
    assert sock.parent.stat().st_mode & 0o777 == 0o700
    zygote_dir.chmod(0o755)  # even were its folder open, the socket is root's alone
    try:
        result = _connect_as_nobody(str(sock))
    finally:
        zygote_dir.chmod(0o700)
    assert result.returncode != 0 and "PermissionError" in result.stderr, result


async def test_only_root_reaches_the_zygote(provider: LocalProvider, zygote_dir: Path) -> None:
    await provider.create(SandboxSpec())  # the zygote runs
    plan = provider.zygote_plan()
    assert plan is not None
    await anyio.to_thread.run_sync(_check_only_root, plan, zygote_dir)


async def _until(check: Callable[[], bool]) -> None:
    """Wait on state; the deadline only turns a hang into a failure."""
    with anyio.fail_after(30):
        while not await anyio.to_thread.run_sync(check):  # noqa: ASYNC110 - /proc has no event
            await anyio.sleep(0.05)


async def test_boxes_outlive_a_killed_zygote(provider: LocalProvider) -> None:
    first = await provider.create(SandboxSpec())
    (zygote,) = _zygotes(provider.zygote_dir)
    os.kill(zygote, signal.SIGKILL)
    await _until(lambda: zygote not in host._all_pids() or host._stat(zygote) is None)
    async with await provider.connect(first.id) as guest:
        assert await host.sh_out(guest, "echo still") == "still\n"
    second = await provider.create(SandboxSpec())  # a new zygote is started for it
    log = Layout.of(provider.home, second.id).log.read_text()
    assert _zygotes(provider.zygote_dir) and zygote not in _zygotes(provider.zygote_dir), log
    trees = [host.process_tree(info.id) for info in (first, second)]
    for info in (first, second):
        await provider.destroy(info.id)
    for tree in trees:
        assert not await anyio.to_thread.run_sync(host.wait_all_gone, tree)


def _holding(sandbox_id: str) -> list[str]:
    """Mounts of any process, and loop devices, still naming the box's folder."""
    held = [
        f"{pid}: {line}"
        for pid in host._all_pids()
        for line in _mountinfo(pid)
        if sandbox_id in line
    ]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if sandbox_id in backing.read_text():
                held.append(f"{backing.parent.parent.name}: {backing.read_text().strip()}")
    return held


def _mountinfo(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []


async def test_the_box_that_started_the_zygote_leaves_nothing_held_by_it(
    provider: LocalProvider,
) -> None:
    """The first box's supervisor starts the zygote, which then serves every box for as long
    as it runs: it must not start inside that box's set-up (its files and disk staged in
    the supervisor's mount namespace), or removing the box leaves its disk attached."""
    assert not _zygotes(provider.zygote_dir)
    first = await provider.create(SandboxSpec(disk_mb=64))
    (zygote,) = _zygotes(provider.zygote_dir)
    await provider.destroy(first.id)
    assert _zygotes(provider.zygote_dir) == [zygote]  # still serving
    assert await anyio.to_thread.run_sync(_holding, first.id) == []


async def test_a_killed_boot_ends_its_box_with_an_error(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec())
    boot, _ = await anyio.to_thread.run_sync(_box, info.id)
    tree = host.process_tree(info.id)
    os.kill(boot, signal.SIGKILL)
    await _until(lambda: not host.alive(tree))
    layout = Layout.of(provider.home, info.id)
    assert (await provider.info(info.id)).status == "error"
    assert state.read_exit(layout)["code"] == 1


async def test_an_idle_zygote_leaves_and_the_next_box_starts_another(
    provider: LocalProvider, zygote_dir: Path
) -> None:
    plan = launch.plan(
        provider.runtime,
        provider.pycache,
        shutil.which("bwrap") or "bwrap",
        folder=zygote_dir,
        idle=1,
    )
    assert plan is not None
    client.connect(plan).close()  # starts it
    await _until(lambda: len(_zygotes(zygote_dir)) == 1)
    (zygote,) = _zygotes(zygote_dir)
    await _until(lambda: host._stat(zygote) is None)
    assert not await anyio.to_thread.run_sync(Path(str(plan["socket"])).exists)
    client.connect(plan).close()  # the next one
    await _until(lambda: bool(_zygotes(zygote_dir)) and zygote not in _zygotes(zygote_dir))


def _check_supervisor(layout: Layout, zygote_dir: Path) -> None:
    meta = state.load(layout)
    assert meta is not None and meta.supervisor_pid is not None
    pid = meta.supervisor_pid
    assert supervised.alive(SUPERVISOR_MODULE, layout.root, pid)
    parent = host._stat(pid)
    assert parent is not None and parent[0] in _servers(zygote_dir)
    assert os.getsid(pid) == pid  # a session of its own, like a detached one
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert CANARY.encode() not in environ
    assert set(filter(None, environ.split(b"\0"))) == {
        f"{k}={v}".encode() for k, v in launch.SUPERVISOR_ENV.items()
    }


async def test_supervisors_are_forked_without_the_callers_environment(
    provider: LocalProvider,
) -> None:
    info = await provider.create(SandboxSpec())
    layout = Layout.of(provider.home, info.id)
    await anyio.to_thread.run_sync(_check_supervisor, layout, provider.zygote_dir)
    await provider.stop(info.id)  # the server reaps it; the box stops as usual
    assert (await provider.info(info.id)).status == "stopped"
    await provider.start(info.id)
    async with await provider.connect(info.id) as guest:
        assert await host.sh_out(guest, "echo again") == "again\n"


async def test_the_supervisor_server_refuses_a_bad_folder(provider: LocalProvider) -> None:
    plan = provider.supervisors_plan()
    assert plan is not None
    null = os.open("/dev/null", os.O_WRONLY)
    try:
        for root in ("relative/path", "/nonexistent/box", 42):
            payload = json.dumps({"root": root}).encode()
            reply = await anyio.to_thread.run_sync(_send, plan, payload, [null])
            assert "error" in reply and "pid" not in reply, (root, reply)
        # a kind of supervisor it does not have (it forks only its own entry points)
        for kind in ("bwrap", "../local", 42, None):
            payload = json.dumps({"root": str(provider.home), "kind": kind}).encode()
            reply = await anyio.to_thread.run_sync(_send, plan, payload, [null])
            assert "error" in reply and "pid" not in reply, (kind, reply)
    finally:
        os.close(null)


async def test_boxes_outlive_a_killed_supervisor_server(provider: LocalProvider) -> None:
    first = await provider.create(SandboxSpec())
    (server,) = _servers(provider.zygote_dir)
    os.kill(server, signal.SIGKILL)
    await _until(lambda: host._stat(server) is None)
    async with await provider.connect(first.id) as guest:
        assert await host.sh_out(guest, "echo still") == "still\n"
    second = await provider.create(SandboxSpec())
    assert _servers(provider.zygote_dir) and server not in _servers(provider.zygote_dir)
    trees = [host.process_tree(info.id) for info in (first, second)]
    for info in (first, second):
        await provider.destroy(info.id)
    for tree in trees:
        assert not await anyio.to_thread.run_sync(host.wait_all_gone, tree)
