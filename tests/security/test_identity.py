"""The box is never host root, and the host never connects to a socket the box planted.

Real sandboxes (bubblewrap, Xvfb, x11vnc), attacked from inside with the shell tool. As
root, every sandbox must run as its own unprivileged host uid; not as root, the box keeps
the invoking user (those tests say so and check that instead).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from hivecell.errors import ConfigError, ToolFailed
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local import identity, supervisor, uidpool
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.server.vnc import provider_resolver
from tests.agent.helpers import short_tmp
from tests.sandbox.host import process_tree, sh_out, shell

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="per-sandbox uids exist only as root")
MAX_PIDS = 48
FORK_BOMB = r"""python3 -c '
import os, time
kids = []
try:
    while len(kids) < 400:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
except OSError as exc:
    print("refused:", exc.strerror)
print(len(kids))
for pid in kids:
    os.kill(pid, 9)
'"""


@dataclass
class Pair:
    provider: LocalProvider
    home: Path
    a: SandboxInfo
    b: SandboxInfo


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: the two sandboxes below boot once for all tests


@pytest.fixture(scope="module")
def module_home() -> Iterator[Path]:
    path = short_tmp("hc-id-")  # mkdtemp: mode 0700, like the $HIVECELL_HOME hivecell makes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def pair(module_home: Path) -> AsyncIterator[Pair]:
    provider = LocalProvider(module_home, pycache=module_home / "pycache")
    a = await provider.create(SandboxSpec())
    b = await provider.create(SandboxSpec())
    yield Pair(provider, module_home, a, b)
    for info in await provider.list():
        await provider.destroy(info.id)


@pytest.fixture
async def fresh(module_home: Path) -> AsyncIterator[Callable[..., LocalProvider]]:
    """Providers on a home of their own, sharing the module's bytecode cache."""
    home = short_tmp("hc-idf-")
    made: list[LocalProvider] = []

    def make(limits_backend: str = "auto") -> LocalProvider:
        cache = module_home / "pycache"
        made.append(LocalProvider(home, pycache=cache, limits_backend=limits_backend))
        return made[-1]

    yield make
    for provider in made[:1]:
        for info in await provider.list():
            await provider.destroy(info.id)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def host_unix_service() -> Iterator[socket.socket]:
    """A unix socket service on the host that no sandbox may ever reach."""
    folder = short_tmp("hc-svc-")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / "host.sock"))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()
    shutil.rmtree(folder, ignore_errors=True)


def assert_nothing_reached(server: socket.socket) -> None:
    # A unix connect is queued at connect() time, so a connection would be waiting by now.
    with pytest.raises(BlockingIOError):
        server.accept()


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


def proc_ids(pid: int) -> set[int]:
    """Real, effective, saved and fs uids and gids of a process."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    found = set()
    for line in lines:
        if line.startswith(("Uid:", "Gid:")):
            found |= {int(v) for v in line.split()[1:]}
    return found


def sandbox_root(info: SandboxInfo) -> Path:
    """The sandbox's host folder (its sockets/ folder is in it; shared/ is on its disk)."""
    assert info.guest_socket is not None
    return Path(info.guest_socket).parent.parent


def box_processes(sandbox_root: Path) -> set[int]:
    """bwrap and everything inside the box: the supervisor's descendants, not itself."""
    procs = {pid for pid, _ in process_tree(str(sandbox_root))}
    mine = str(sandbox_root).encode()
    # The supervisor's log copier stays on the host side: a shell leading a session of its
    # own, and the dd / head / cat it runs in that session.
    copier = supervisor.COPIER.encode()
    copiers = {pid for pid in procs if copier in Path(f"/proc/{pid}/cmdline").read_bytes()}
    return {
        pid
        for pid in procs
        if mine not in Path(f"/proc/{pid}/cmdline").read_bytes() and _sid(pid) not in copiers
    }


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def euid_as_nobody(shell: Path) -> str:
    """Run the shell ``shell`` as nobody and print the euid it gets (-p keeps a setuid one).

    Through an fd: the 0700 home keeps nobody out of the path.
    """
    fd = os.open(shell, os.O_RDONLY)
    try:
        got = subprocess.run(
            [f"/proc/self/fd/{fd}", "-p", "-c", "id -u"],
            pass_fds=(fd,),
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        os.close(fd)
    return got.stdout.strip()


# --- who owns what -------------------------------------------------------------------------
@needs_root
async def test_box_files_belong_to_the_sandbox_s_own_uid(pair: Pair) -> None:
    made = "touch /shared/outbox/out ~/home-file && mkdir /shared/workspace/dir && echo ok"
    for info in (pair.a, pair.b):
        async with await pair.provider.connect(info.id) as guest:
            assert await sh_out(guest, made) == "ok\n"
    uid_a, uid_b = pair.a.host_uid, pair.b.host_uid
    assert uid_a is not None and uid_b is not None
    assert uid_a != uid_b and uidpool.in_range(uid_a) and uidpool.in_range(uid_b)
    for info in (pair.a, pair.b):
        shared, home = (
            Path(info.shared_dir),
            Path(info.shared_dir).parent / "home",
        )  # both on the disk
        for path in (shared / "outbox/out", shared / "workspace/dir", home / "home-file"):
            assert owner(path) == (info.host_uid, info.host_uid), path


@needs_root
async def test_no_box_process_runs_as_host_root(pair: Pair) -> None:
    box = box_processes(sandbox_root(pair.a))
    assert len(box) >= 4  # bwrap, boot, Xvfb, openbox at least
    assert {pid: proc_ids(pid) for pid in box} == {pid: {pair.a.host_uid} for pid in box}


@needs_root
async def test_a_setuid_shell_made_inside_gives_no_one_root(pair: Pair) -> None:
    async with await pair.provider.connect(pair.a.id) as guest:
        cmd = "cp /bin/sh /shared/outbox/rootsh && chmod 4755 /shared/outbox/rootsh && echo ok"
        assert await sh_out(guest, cmd) == "ok\n"
    planted = Path(pair.a.shared_dir) / "outbox/rootsh"
    st = planted.lstat()
    assert st.st_mode & stat.S_ISUID and st.st_uid == pair.a.host_uid != 0
    granted = euid_as_nobody(planted)
    assert granted != "0"
    assert granted in {str(pair.a.host_uid), "65534"}  # 65534 on a nosuid /tmp


# --- sockets the box could swap ------------------------------------------------------------
async def test_planted_socket_links_never_reach_the_host(
    pair: Pair, host_unix_service: socket.socket
) -> None:
    resolve = provider_resolver(pair.provider)
    vnc = await resolve(pair.a.id)  # x11vnc runs now; the box swaps its socket under it
    assert await _first_bytes(vnc) == b"RFB 003.008\n"
    other = pair.b.endpoint.removeprefix("unix:")
    for target in (host_unix_service.getsockname(), other):
        plant = (
            "cd /run/hivecell && rm -f guest.sock vnc.sock && "
            f"ln -s {target} guest.sock && ln -s {target} vnc.sock && echo planted"
        )
        async with await pair.provider.connect(pair.a.id) as guest:
            assert await sh_out(guest, plant) == "planted\n"
        async with await pair.provider.connect(pair.a.id) as guest:  # a fresh connection
            assert await sh_out(guest, "hostname") == f"{pair.a.id}\n"  # A itself answers
        with pytest.raises(ToolFailed, match="no longer x11vnc's socket"):
            await resolve(pair.a.id)  # the server closes the viewer with this reason
        assert await _first_bytes(vnc) == b""  # the box's relay finds no x11vnc: closed
        assert_nothing_reached(host_unix_service)
    async with await pair.provider.connect(pair.a.id) as guest:
        await guest.call("stop_vnc")


async def _first_bytes(endpoint: str) -> bytes:
    """What a VNC viewer connecting to ``endpoint`` first receives (b"" if it is closed)."""
    async with await anyio.connect_unix(endpoint.removeprefix("unix:")) as stream:
        data = b""
        with anyio.fail_after(20):  # a guard: a hang is a failure, not the wait
            while len(data) < 12:
                try:
                    data += await stream.receive(12 - len(data))
                except anyio.EndOfStream:
                    break
        return data


async def test_the_host_sockets_are_outside_the_box(pair: Pair) -> None:
    guest_socket = Path(pair.a.guest_socket or "")
    assert pair.a.endpoint == f"unix:{guest_socket}"
    assert guest_socket.parent == sandbox_root(pair.a) / "sockets"
    folder = guest_socket.parent.lstat()
    assert folder.st_uid == os.geteuid() and stat.S_IMODE(folder.st_mode) == 0o700
    async with await pair.provider.connect(pair.a.id) as guest:
        seen = await sh_out(guest, "cat /proc/self/mountinfo")
    assert "sockets" not in seen and str(guest_socket.parent) not in seen


# --- listing -------------------------------------------------------------------------------
async def test_cli_lists_guest_socket_shared_dir_and_host_uid(pair: Pair) -> None:
    def cli(*args: str) -> str:
        cmd = [sys.executable, "-m", "hivecell.cli.main", "sandbox", *args, "--home"]
        done = subprocess.run([*cmd, str(pair.home)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = {s["id"]: s for s in json.loads(cli("ls", "--json"))}
    shown = json.loads(cli("info", pair.a.id))
    for entry in (listed[pair.a.id], shown):
        assert entry["guest_socket"] == pair.a.guest_socket
        assert entry["shared_dir"] == pair.a.shared_dir
        assert entry["host_uid"] == (pair.a.host_uid if AS_ROOT else os.getuid())
    assert stat.S_ISSOCK(os.lstat(pair.a.guest_socket or "").st_mode)


# --- limits and homes ----------------------------------------------------------------------
async def test_rlimit_nproc_binds_without_cgroups(fresh: Callable[..., LocalProvider]) -> None:
    provider = fresh(limits_backend="rlimit")
    info = await provider.create(SandboxSpec(max_pids=MAX_PIDS, memory_mb=None))
    assert info.detail.startswith("limits: memory=none pids=rlimit ")
    async with await provider.connect(info.id) as guest:
        result = await shell(guest, FORK_BOMB)
        assert "refused: Resource temporarily unavailable" in result["stdout"], result
        assert 0 < int(result["stdout"].splitlines()[-1]) < MAX_PIDS
        assert (await guest.call("ping"))["pong"] is True


async def test_a_0700_home_under_a_0700_folder_works() -> None:
    outer = short_tmp("hc-0700-")
    home = outer / "home"
    home.mkdir(mode=0o700)
    private_cache = outer / "pyc"  # the bytecode cache is behind the 0700 folder too
    try:
        assert stat.S_IMODE(outer.stat().st_mode) == stat.S_IMODE(home.stat().st_mode) == 0o700
        provider = LocalProvider(home, pycache=private_cache)
        info = await provider.create(SandboxSpec())
        async with await provider.connect(info.id) as guest:
            out = await sh_out(guest, "echo hi > /shared/outbox/x && cat /shared/outbox/x && id -u")
        assert out == "hi\n1000\n"
        assert (Path(info.shared_dir) / "outbox/x").read_text() == "hi\n"
        await provider.destroy(info.id)
        if AS_ROOT:
            assert not list(identity.STAGE.iterdir())  # staging never shows on the host
    finally:
        shutil.rmtree(outer, ignore_errors=True)


@needs_root
async def test_destroy_gives_the_uid_back(fresh: Callable[..., LocalProvider]) -> None:
    provider = fresh()
    info = await provider.create(SandboxSpec(max_pids=None, memory_mb=None))
    claim = uidpool.REGISTRY / str(info.host_uid)
    assert claim.read_text() == str(sandbox_root(info))
    await provider.destroy(info.id)
    assert not claim.exists()


# --- the uid pool and the userns check, on their own -----------------------------------------
def test_pool_never_meets_the_slirp_groups() -> None:
    from hivecell.sandbox.local.hostfilter import GID_BASE, GID_SLOTS

    last = uidpool.UID_BASE + uidpool.UID_SLOTS - 1
    assert last < GID_BASE or uidpool.UID_BASE >= GID_BASE + GID_SLOTS
    assert uidpool.UID_BASE >= 1_879_048_192 and last <= 2_147_352_575  # systemd's free block


def test_pool_claims_are_unique_and_stale_ones_are_reused(tmp_path: Path) -> None:
    registry = tmp_path / "uids"
    box_a, box_b, box_c = (tmp_path / n for n in "abc")
    for box in (box_a, box_b, box_c):
        box.mkdir()
    uid_a = uidpool.allocate(box_a, registry)
    uid_b = uidpool.allocate(box_b, registry)
    assert uid_a != uid_b and uidpool.in_range(uid_a) and uidpool.in_range(uid_b)
    box_a.rmdir()  # a home removed without destroy: its claim is stale
    uid_c = uidpool.allocate(box_c, registry)
    assert uid_c != uid_b
    assert uid_c == uid_a or uid_a in uidpool._running_uids()
    uidpool.release(uid_b, box_a, registry)  # not the holder: nothing happens
    assert (registry / str(uid_b)).read_text() == str(box_b)
    uidpool.release(uid_b, box_b, registry)
    assert not (registry / str(uid_b)).exists()


def test_forbidden_user_namespaces_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    switch = tmp_path / "max_user_namespaces"
    switch.write_text("0\n")
    monkeypatch.setattr(identity, "MAX_USER_NAMESPACES", switch)
    assert identity.userns_unavailable() == "sysctl user.max_user_namespaces is 0"
    if AS_ROOT:
        from hivecell.sandbox.local.provider import _require_userns

        with pytest.raises(ConfigError, match=r"user\.max_user_namespaces"):
            _require_userns()


@needs_root
async def test_a_sandbox_without_its_own_uid_is_not_started_as_root(
    fresh: Callable[..., LocalProvider],
) -> None:
    provider = fresh()
    info = await provider.create(SandboxSpec(max_pids=None, memory_mb=None))
    await provider.stop(info.id)
    forget_host_uid(sandbox_root(info) / "meta.json")  # as an older hivecell wrote it
    with pytest.raises(ConfigError, match="its user would be host root"):
        await provider.start(info.id)
    assert (await provider.info(info.id)).status == "stopped"


def forget_host_uid(meta: Path) -> None:
    data = json.loads(meta.read_text())
    del data["info"]["host_uid"]
    meta.write_text(json.dumps(data))
