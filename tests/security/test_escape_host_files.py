"""Escape attempts at the host's files and processes, from inside a real ``offline`` sandbox.

Each test is one attack, tried the way code running in the box would try it; each must fail
and leave the host as it was (checked on the host before and after). Link swaps of the
outbox/inbox, host uids, seccomp, mounts and disk caps have suites of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from hivecell.errors import GuestUnavailable
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.sandbox.local.supervisor import LOG_CAP_BYTES
from tests.sandbox.conftest import short_tmp
from tests.sandbox.host import sh_out, shell
from tests.security.conftest_escape import (
    ACCESS,
    HostState,
    Markers,
    host_markers,
    link_counts,
    own_pid_alive,
    run_probe,
    token,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
CANARY = "HIVECELL_ESCAPE_TEST_API_KEY"


@dataclass
class Box:
    provider: LocalProvider
    info: SandboxInfo
    canary: str  # the value of a variable in the environment of the process that made the box

    @property
    def layout(self) -> Layout:
        return Layout.of(self.provider.home, self.info.id)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: one box for every attack below


@pytest.fixture(scope="module")
def module_home() -> Iterator[Path]:
    path = short_tmp("hc-esc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def box(module_home: Path) -> AsyncIterator[Box]:
    provider = LocalProvider(module_home, pycache=module_home / "pycache")
    canary = token("sk-escape-canary")
    os.environ[CANARY] = canary  # as an API key would be in a CLI's or server's environment
    try:
        info = await provider.create(SandboxSpec(network="offline"))
    finally:
        del os.environ[CANARY]
    yield Box(provider, info, canary)
    for each in await provider.list():
        await provider.destroy(each.id)


@pytest.fixture
async def guest(box: Box) -> AsyncIterator[GuestClient]:
    async with await box.provider.connect(box.info.id) as client:
        yield client


@pytest.fixture
def markers() -> Iterator[Markers]:
    with host_markers() as made:
        yield made


async def _box_pids(guest: GuestClient) -> list[int]:
    listing = await sh_out(guest, "ps -e -o pid=")
    return [int(pid) for pid in listing.split()]


# --- host files ----------------------------------------------------------------------------------
READ_ALL = r"""
import errno, json, os, sys
out = {}
for path in json.load(sys.stdin):
    try:
        with open(path, "rb") as fh:
            out[path] = "read:" + fh.read(64).decode(errors="replace")
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno or 0, str(exc))
print(json.dumps(out))
"""


async def test_host_files_are_not_reachable_by_any_path(
    guest: GuestClient, markers: Markers
) -> None:
    """Attack: read the host's /etc/shadow and host-only files (random names under /root,
    /tmp, /var/tmp, /dev/shm) directly, through /proc/1/root, and through /proc/<pid>/root and
    /proc/<pid>/cwd of every process the box can see; then search the box's whole tree
    for the marker's name. Nothing may be read, nothing found."""
    host_state = HostState([Path("/etc/shadow"), *markers.files])
    pids = await _box_pids(guest)
    targets = ["/etc/shadow", "/etc/gshadow", *map(str, markers.files)]
    prefixes = ["", "/proc/1/root", *(f"/proc/{p}/root" for p in pids)]
    prefixes += [f"/proc/{p}/cwd/../../.." for p in pids]
    paths = [prefix + target for prefix in prefixes for target in targets]
    verdicts = await run_probe(guest, READ_ALL, paths)
    leaked = {p: v for p, v in verdicts.items() if v.startswith("read:")}
    assert not leaked, leaked
    assert markers.secret not in json.dumps(verdicts)
    found = await shell(guest, f"find / -path /proc -prune -o -name '{markers.name}' -print")
    assert found["stdout"] == "", found
    host_state.assert_unchanged()


MOUNTINFO = r"""
import json
mounts = []
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    dash = fields.index("-")
    mounts.append({"root": fields[3], "point": fields[4], "options": fields[5],
                   "fstype": fields[dash + 1]})
print(json.dumps(mounts))
"""


async def test_host_paths_named_in_mountinfo_give_nothing_beyond_the_binds(
    guest: GuestClient,
) -> None:
    """Attack: /proc/self/mountinfo names the host source of every bind (the sandbox's
    host folder, the Python install under /root, the project checkout). Try each revealed
    host path, and each folder above it, for reading and writing inside the box. A path
    may only be readable where the very same path is bound into the box (e.g. /usr), never
    writable, and no write may land in the host's folder of that name."""
    mounts = await run_probe(guest, MOUNTINFO, None)
    sources = {m["root"] for m in mounts if m["fstype"] not in ("proc", "tmpfs", "devpts")}
    revealed = {p for s in sources for p in [Path(s), *Path(s).parents] if p != Path("/")}
    # The box's own skeleton (mount points and the folders bwrap made for them) may share a
    # name with a host folder, like /tmp: what the box finds there is its own.
    points = [Path(m["point"]) for m in mounts]
    skeleton = {p for point in points for p in [point, *point.parents]}
    identity = [Path(m["point"]) for m in mounts if m["root"] == m["point"]]
    host_paths = sorted(revealed - skeleton)
    probe = token()
    host_state = HostState(host_paths)
    request = {"paths": [str(p) for p in host_paths], "probe": probe}
    verdicts = await run_probe(guest, ACCESS, request)
    assert any(str(p).startswith("/root") or "sandboxes" in str(p) for p in host_paths)
    for path, (read, write) in verdicts.items():
        bound = any(Path(path) == i or i in Path(path).parents for i in identity)
        assert read != "yes" or bound, f"{path}: a host path readable in the box"
        assert write != "yes", f"{path}: a host path writable in the box"
    assert not any((p / probe).exists() for p in host_paths)
    host_state.assert_unchanged()


SYSCTL_WRITE = r"""
import errno, json, os
opened, refused = [], {}
for root, _, files in os.walk("/proc/sys"):
    for name in files:
        path = os.path.join(root, name)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            opened.append(path)
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc))
            refused[code] = refused.get(code, 0) + 1
for path in ("/proc/sysrq-trigger",):
    try:
        os.close(os.open(path, os.O_WRONLY))
        opened.append(path)
    except OSError:
        pass
value = open("/proc/sys/kernel/printk_ratelimit").read()
try:
    with open("/proc/sys/kernel/printk_ratelimit", "w") as fh:  # the same value: harmless
        fh.write(value)
    rewrite = "written"
except OSError as exc:
    rewrite = errno.errorcode.get(exc.errno or 0, str(exc))
print(json.dumps({"opened": opened, "refused": refused, "rewrite": rewrite}))
"""


async def test_host_kernel_settings_are_read_only(guest: GuestClient) -> None:
    """Attack: /proc/sys holds host-global kernel settings (core_pattern runs a program as
    host root on any crash; protected_hardlinks, drop_caches, ...). The kernel lets any
    writer whose uid is host root change them; open every file under /proc/sys (and
    /proc/sysrq-trigger) for writing, and write kernel.printk_ratelimit's own value back.
    Everything must be refused and the host's settings unchanged."""
    watched = [Path("/proc/sys/kernel/core_pattern"), Path("/proc/sys/kernel/printk_ratelimit")]
    host_state = HostState(watched)
    verdict = await run_probe(guest, SYSCTL_WRITE, None)
    assert verdict["opened"] == [], f"{len(verdict['opened'])} writable: {verdict['opened'][:10]}"
    assert verdict["rewrite"] in ("EROFS", "EACCES", "EPERM"), verdict
    assert sum(verdict["refused"].values()) > 100, verdict  # it did walk the tree
    host_state.assert_unchanged()


FD_REOPEN = r"""
import errno, json, os
out = {}
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        link = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if not target.startswith("/") or os.path.exists(target):
            continue  # pipes, sockets and the box's own files
        verdict = []
        for flags in (os.O_RDONLY, os.O_WRONLY | os.O_APPEND):
            try:
                os.close(os.open(link, flags | os.O_NONBLOCK))
                verdict.append("yes")
            except OSError as exc:
                verdict.append(errno.errorcode.get(exc.errno or 0, str(exc)))
        out[f"{link} -> {target}"] = verdict
print(json.dumps(out))
"""


async def test_host_files_held_open_by_box_processes_cannot_be_reopened(
    box: Box, guest: GuestClient
) -> None:
    """Attack: a process in the box may hold a host file open (e.g. a log as its stdout);
    /proc/<pid>/fd/N then reopens that host file by its magic link, outside every mount
    of the box. Find every fd of every box process whose target is not a path of the box
    and reopen it for reading and for appending (nothing is written). None may open, so
    the box can neither read host logs nor grow them past its disk cap."""
    log = anyio.Path(box.layout.log)
    before = await log.read_bytes()
    verdicts = await run_probe(guest, FD_REOPEN, None)
    opened = {link: v for link, v in verdicts.items() if "yes" in v}
    assert not opened, opened
    # The box's own output keeps being appended by its log copier (a late line under load):
    # what was there stays, untruncated and unrewritten.
    assert (await log.read_bytes()).startswith(before)


HARDLINKS = r"""
import errno, json, os, sys
request = json.load(sys.stdin)
out = {}
for index, target in enumerate(request["targets"]):
    name = f"/shared/outbox/{request['probe']}-{index}"
    try:
        os.link(target, name, follow_symlinks=True)
        out[target] = "linked"
    except OSError as exc:
        out[target] = errno.errorcode.get(exc.errno or 0, str(exc))
own = "/shared/workspace/" + request["probe"]
open(own, "w").write("mine")
os.link(own, f"/shared/outbox/{request['probe']}-own")
print(json.dumps(out))
"""


async def test_hardlinks_out_of_shared_fail(box: Box, guest: GuestClient) -> None:
    """Attack: hardlink files of other mounts into /shared, so the host would see (and the
    outbox would carry) a host inode: system files (/usr, /etc), the bound project and
    Python install, the box's home, and host files
    reached through /proc/<pid>/fd magic links. Every link() must fail with EXDEV; only a
    link between two files of /shared itself may succeed, and host inodes keep their link
    counts."""
    await sh_out(guest, "echo home > ~/home-file")
    targets = [
        "/usr/bin/python3", "/etc/passwd", "/etc/hosts", "/opt/hivecell/src/hivecell/__init__.py",
        "/home/user/home-file", "/proc/1/fd/1", "/proc/1/fd/2",
        "/proc/self/exe",
    ]  # fmt: skip
    host_files = [Path("/usr/bin/python3"), Path("/etc/passwd"), box.layout.log]
    links_before = link_counts(host_files)
    probe = token()
    verdicts = await run_probe(guest, HARDLINKS, {"targets": targets, "probe": probe})
    assert verdicts == dict.fromkeys(targets, "EXDEV"), verdicts
    outbox = Path(box.info.shared_dir) / "outbox"
    assert sorted(p.name for p in outbox.glob(f"{probe}*")) == [f"{probe}-own"]
    assert link_counts(host_files) == links_before


ENVIRON = r"""
import json, os
out = {}
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for name in ("environ", "cmdline"):
        try:
            out[f"/proc/{pid}/{name}"] = open(f"/proc/{pid}/{name}", "rb").read().decode(
                errors="replace")
        except OSError as exc:
            out[f"/proc/{pid}/{name}"] = "error: " + exc.strerror
print(json.dumps(out))
"""


async def test_the_host_environment_is_not_visible(box: Box, guest: GuestClient) -> None:
    """Attack: read /proc/<pid>/environ and cmdline of every process in the box. bwrap is
    the box's pid 1 and a host program: had it kept the environment of the process that
    made the sandbox (a CLI or server with API keys in it), the box would read those
    keys there. A canary variable set while the box was made must appear nowhere, and
    neither may host-only values such as the host's HOME or working folder."""
    seen = await run_probe(guest, ENVIRON, None)
    assert "/proc/1/environ" in seen and len(seen) >= 8
    leaked = [where for where, text in seen.items() if box.canary in text or CANARY in text]
    assert not leaked, leaked
    host_only = [f"{k}={os.environ.get(k, '/nonexistent')}\0" for k in ("PWD", "HOME")]
    assert not [w for w, text in seen.items() if any(h in text for h in host_only)]


@pytest.fixture
def host_ipc() -> Iterator[list[str]]:
    """Ids of a SysV shared memory segment and a message queue made on the host."""
    made = []
    try:
        for argv in (["ipcmk", "-M", "4096", "-p", "0666"], ["ipcmk", "-Q", "-p", "0666"]):
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            made.append((argv[1], out.split()[-1]))
        yield [ident for _, ident in made]
    finally:
        for kind, ident in made:
            flag = "-m" if kind == "-M" else "-q"
            subprocess.run(["ipcrm", flag, ident], capture_output=True, check=False)


SYSV = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm_id, queue_id = (int(i) for i in json.load(sys.stdin))
out = {}
address = libc.shmat(shm_id, None, 0)
failed = address in (None, ctypes.c_void_p(-1).value)
out["shm"] = errno.errorcode[ctypes.get_errno()] if failed else "attached"
stat = ctypes.create_string_buffer(512)
found = libc.msgctl(queue_id, 2, stat)  # IPC_STAT
out["msg"] = errno.errorcode[ctypes.get_errno()] if found == -1 else "opened"
print(json.dumps(out))
"""


async def test_host_sysv_ipc_is_invisible(guest: GuestClient, host_ipc: list[str]) -> None:
    """Attack: attach the host's SysV shared memory and open its message queues (a classic
    channel between processes of one host). The box has its own IPC namespace: ``ipcs``
    lists none of the host's objects and attaching by the host's ids fails."""
    listing = await sh_out(guest, "ipcs -a")
    assert not any(ident in listing.split() for ident in host_ipc), listing
    verdicts = await run_probe(guest, SYSV, host_ipc)
    assert verdicts == {"shm": "EINVAL", "msg": "EINVAL"}, verdicts


# --- host processes ------------------------------------------------------------------------------
@pytest.fixture
def host_sleeper() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A host process with a unique command line, for the box to hunt."""
    name = token("hc-escape-sleeper")
    argv = [sys.executable, "-c", "import time; time.sleep(600)", name]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        yield proc, name
    finally:
        proc.kill()
        proc.wait()


PID_SCAN = r"""
import json, os, sys
listed = {int(p) for p in os.listdir("/proc") if p.isdigit()}
answered = []
for pid in range(1, json.load(sys.stdin)):
    try:
        os.kill(pid, 0)
        answered.append(pid)
    except ProcessLookupError:
        pass
    except PermissionError:
        answered.append(pid)
listed |= {int(p) for p in os.listdir("/proc") if p.isdigit()}
print(json.dumps({"answered": answered, "listed": sorted(listed)}))
"""


async def test_host_processes_cannot_be_signalled(
    box: Box, guest: GuestClient, host_sleeper: tuple[subprocess.Popen[bytes], str]
) -> None:
    """Attack: SIGKILL host processes from inside: this test's own pid, the box's
    supervisor, a host process with a unique name (by pid and with pkill -f), pid 1 as the
    box sees it (the box's own init, which must shrug it off); then probe every pid up to
    the host's highest with signal 0: only the box's own answer. ps inside lists only the
    box's processes. Every host process stays alive and the box keeps answering."""
    sleeper, name = host_sleeper
    meta = json.loads(box.layout.meta.read_text())
    supervisor = int(meta["supervisor_pid"])
    box_pids = await _box_pids(guest)
    host_pids = [os.getpid(), supervisor, sleeper.pid]
    assert not set(host_pids) & set(box_pids), "pid numbers collide; the check would be void"
    for pid in host_pids:
        result = await shell(guest, f"kill -9 {pid}")
        assert result["exit_code"] != 0 and "No such process" in result["stderr"], (pid, result)
    pattern = f"[{name[0]}]{name[1:]}"  # matches the sleeper, not this shell's own command line
    hunted = await shell(guest, f"pkill -9 -f '{pattern}'; echo $?")
    assert hunted["stdout"] == "1\n", hunted  # pkill: no process matched
    listing = await sh_out(guest, "ps -e -o args=")
    assert name not in listing and "pytest" not in listing
    scan = await run_probe(guest, PID_SCAN, max(host_pids) + 1000)
    # The box numbers its own pids from 1 up; short-lived ones may answer between listings.
    assert max(scan["answered"]) <= max(scan["listed"]) + 64, scan
    assert not set(scan["answered"]) & set(host_pids), scan
    await shell(guest, "kill -9 1")  # the namespace's init ignores signals from inside
    assert (await guest.call("ping"))["pong"] is True
    assert sleeper.poll() is None and own_pid_alive(supervisor)
    assert await sh_out(guest, "cat /proc/1/comm") == "bwrap\n"


async def test_kill_everything_reaches_only_the_box(
    box: Box, host_sleeper: tuple[subprocess.Popen[bytes], str]
) -> None:
    """Attack: ``kill -9 -1`` (every process the caller may signal) from inside a second,
    disposable box. The box's user maps to a host uid, so without a pid namespace this
    would hit host processes of that uid; it must end only that box's own processes, while
    host processes and the other sandbox live on."""
    sleeper, _ = host_sleeper
    victim = await box.provider.create(SandboxSpec(network="offline"))
    try:
        async with await box.provider.connect(victim.id) as victim_guest:
            with pytest.raises(GuestUnavailable):  # the guest agent is one of the killed
                await shell(victim_guest, "kill -9 -1; sleep 5", timeout=20)
        assert sleeper.poll() is None and own_pid_alive(os.getppid())
        async with await box.provider.connect(box.info.id) as other:
            assert (await other.call("ping"))["pong"] is True
        meta = json.loads(box.layout.meta.read_text())
        assert own_pid_alive(int(meta["supervisor_pid"]))
    finally:
        await box.provider.destroy(victim.id)


async def test_box_output_cannot_fill_the_host_disk_through_the_log(
    box: Box, guest: GuestClient
) -> None:
    """Attack: every box process inherits the box's stdout/stderr, which end in the host's
    sandbox.log, outside the box's disk caps. Write 3x the log's cap straight to pid 1's
    stderr (reopened through /proc/1/fd/2). The log may grow by the cap, never more."""
    before = (await anyio.Path(box.layout.log).stat()).st_size
    written = await shell(guest, f"head -c {3 * LOG_CAP_BYTES} /dev/zero > /proc/1/fd/2")
    # Refused outright (pid 1 runs as the box's own uid but is not dumpable), or written into
    # the drained pipe without blocking.
    refused = "Permission denied" in written["stderr"]
    assert written["exit_code"] == 0 or refused, written
    after = (await anyio.Path(box.layout.log).stat()).st_size
    assert after - before <= LOG_CAP_BYTES + 4096, (before, after)
    assert (await guest.call("ping"))["pong"] is True
