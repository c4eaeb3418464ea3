"""What a server run left behind on the host: processes, sandbox folders, cgroups, nftables
entries, mounts, loop devices, and the server's open file descriptors.

Other people's sandboxes run on the same host, so nothing here counts host-wide: each kind
is attributed to one run, by its ``HIVECELL_HOME`` (a command line, working folder or
environment naming it; a mount or loop device under it) or by the ids of the sandboxes the
run made (a ``hivecell/<id>`` cgroup, an nftables element labelled with the id), or by
being a process the run was seen to own while it ran (``RunTracker``). Blocking (reads
/proc, runs ``nft``): async callers use a worker thread.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from hivecell.sandbox.local import hostfilter, limits
from hivecell.sandbox.local.zygote import client as zygote_client
from hivecell.sandbox.local.zygote import launch as zygote_launch

PAGE = os.sysconf("SC_PAGE_SIZE")
CGROUP_CONTROLLERS = ("memory", "pids", "cpu")  # the ones limits.py puts sandboxes in
NFT_KEPT_SETS = ("open", "cidr4", "cidr6")  # per-box sets whose elements never time out
_IN_SANDBOX_CGROUP = re.compile(rf"/{limits.SUBTREE}/([A-Za-z0-9_.-]+)$", re.MULTILINE)

TCP_ESTABLISHED = "01"  # the st column of /proc/net/tcp
ProcessKey = tuple[int, int]  # (pid, start time in clock ticks): a pid alone gets reused


class Leaks(BaseModel):
    """Each leaked thing by name; all empty after a clean run."""

    model_config = ConfigDict(extra="forbid")

    processes: list[str] = []
    sandbox_folders: list[str] = []
    cgroups: list[str] = []
    nft_entries: list[str] = []
    mounts: list[str] = []
    loop_devices: list[str] = []
    fds: list[str] = []

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.model_dump().values())


# --- processes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int
    rss_bytes: int
    cmdline: str
    comm: str = ""
    state: str = ""

    @property
    def key(self) -> ProcessKey:
        return (self.pid, self.start)

    def describe(self) -> str:
        what = self.cmdline[:200] or f"[{self.comm}]"
        return f"pid {self.pid} ({self.state}, parent {self.ppid}): {what}"


def processes() -> dict[int, Proc]:
    """Every process on the host (those that exit while we read are skipped)."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (proc := _read_proc(int(entry.name))) is not None:
            found[proc.pid] = proc
    return found


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    rss = int(statm[1]) * PAGE
    return Proc(pid, int(fields[1]), int(fields[19]), rss, cmdline, comm, fields[0])


def _mentions(pid: int, cmdline: str, needle: str) -> bool:
    """Whether the process's command line, working folder or environment names ``needle``."""
    if needle in cmdline:
        return True
    try:
        if str(Path(f"/proc/{pid}/cwd").readlink()).startswith(needle):
            return True
        return needle.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def sandbox_cgroup(pid: int) -> str | None:
    """The sandbox id of the ``hivecell/<id>`` cgroup the process is in, if any."""
    try:
        found = _IN_SANDBOX_CGROUP.search(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None
    return found.group(1) if found else None


def with_descendants(table: dict[int, Proc], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _own_lineage() -> set[int]:
    """This process and its ancestors: the bench (or test) names the home itself."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        proc = _read_proc(pid)
        pid = proc.ppid if proc is not None else 0
    return pids


def run_processes(
    table: dict[int, Proc], home: Path, sandbox_ids: set[str], roots: Iterable[int] = ()
) -> set[int]:
    """The run's processes: ``roots`` (the server), anything naming the home or inside one
    of its sandboxes' cgroups (supervisors detach from the server), and their descendants."""
    needle = str(home)
    mine = _own_lineage()
    shared = zygote_servers(table)
    named = [
        p.pid
        for p in table.values()
        if p.pid not in mine | shared
        and (_mentions(p.pid, p.cmdline, needle) or sandbox_cgroup(p.pid) in sandbox_ids)
    ]
    starts = [pid for pid in [*roots, *named] if pid not in shared]
    return with_descendants(table, starts) - mine - shared


def zygote_servers(table: dict[int, Proc]) -> set[int]:
    """The host's zygote (its bwrap and the server in it): one serves every home and leaves
    when idle, so it is no run's leftover, though its command line names the home of the
    box that started it. What it forks into a run's boxes is in their cgroups."""
    module = f"-m {zygote_launch.SERVER_MODULE} "
    outer = {p.pid for p in table.values() if module in p.cmdline}
    inner = {
        p.pid
        for p in table.values()
        if p.ppid in outer and p.cmdline.startswith(f"{zygote_client.TITLE} ")
    }
    return outer | inner


@dataclass
class RunTracker:
    """What a run owns while it runs, sampled: its processes, sandbox ids, nftables groups."""

    home: Path
    server_pid: int | None = None
    sandbox_ids: set[str] = field(default_factory=set)
    seen: dict[ProcessKey, str] = field(default_factory=dict)
    nft_gids: set[int] = field(default_factory=set)
    peak_rss_bytes: int = 0

    def sample(self) -> None:
        self.sandbox_ids.update(sandbox_folders(self.home))
        table = processes()
        pids = run_processes(table, self.home, self.sandbox_ids, _given(self.server_pid))
        for pid in pids:
            self.seen.setdefault(table[pid].key, table[pid].describe())
        self.peak_rss_bytes = max(self.peak_rss_bytes, sum(table[p].rss_bytes for p in pids))

    def sample_nft(self, table: str = hostfilter.TABLE) -> None:
        listing = nft_table(table)
        if listing is not None:
            owned = {gid for gid, owner in listing.slirp.items() if owner in self.sandbox_ids}
            self.nft_gids.update(owned)


def _given(pid: int | None) -> list[int]:
    return [pid] if pid is not None else []


def leaked_processes(
    home: Path, sandbox_ids: set[str], seen: dict[ProcessKey, str] | None = None
) -> list[str]:
    """Processes of the run still alive: seen during it (same pid and start time), or
    naming its home, or in one of its sandboxes' cgroups, and their descendants."""
    table = processes()
    alive = [p.pid for p in table.values() if p.key in (seen or {})]
    pids = run_processes(table, home, sandbox_ids, alive)
    # A zombie has exited and holds nothing but its pid until its parent reaps it: a
    # detached supervisor's parent is init, which reaps when it gets to it (and a parent
    # from the run that does not reap is listed itself).
    return sorted(table[pid].describe() for pid in pids if table[pid].state != "Z")


# --- files, cgroups, nftables, mounts -------------------------------------------------------
def sandbox_folders(home: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(home / "sandboxes"))
    except FileNotFoundError:
        return []


def cgroup_parents() -> list[Path]:
    """Where limits.py puts sandbox cgroups (``<parent>/hivecell/<id>``), per hierarchy."""
    found = limits.Hierarchies.read()
    parents = []
    for version in ("cgroup2", "cgroup1"):
        for controller in CGROUP_CONTROLLERS:
            parent, _ = found.parent(version, controller)
            if parent is not None and parent / limits.SUBTREE not in parents:
                parents.append(parent / limits.SUBTREE)
    return parents


def leaked_cgroups(sandbox_ids: set[str], parents: Iterable[Path] | None = None) -> list[str]:
    folders = []
    for subtree in cgroup_parents() if parents is None else parents:
        folders += [str(subtree / name) for name in sandbox_ids if (subtree / name).is_dir()]
    return sorted(folders)


def nft_table(table: str = hostfilter.TABLE) -> hostfilter.Table | None:
    nft = hostfilter.find_nft()
    if nft is None:
        return None
    listing = subprocess.run(
        [nft, "-j", "list", "table", "inet", table], capture_output=True, text=True, check=False
    )
    return hostfilter.Table.parse(listing.stdout) if listing.returncode == 0 else None


def leaked_nft(sandbox_ids: set[str], gids: set[int], table: str = hostfilter.TABLE) -> list[str]:
    """The run's sandboxes' group entries, and per-box elements of groups they held that no
    other sandbox holds now (a group is reused once freed)."""
    listing = nft_table(table)
    if listing is None:
        return []
    found = [
        f"{table} slirp {gid} ({owner})"
        for gid, owner in sorted(listing.slirp.items())
        if owner in sandbox_ids
    ]
    for name in NFT_KEPT_SETS:
        for element in listing.sets.get(name, []):
            gid = _element_gid(element)
            if gid in gids and gid not in listing.slirp:
                found.append(f"{table} {name} {element}")
    return found


def _element_gid(element: Any) -> int | None:
    """The group of an element: a plain number, or the first part of a concatenation."""
    if isinstance(element, dict):
        element = element.get("elem", element)
        if isinstance(element, dict):
            element = element.get("val", element)
        if isinstance(element, dict) and "concat" in element:
            element = element["concat"][0]
    return element if isinstance(element, int) else None


def leaked_mounts(home: Path) -> list[str]:
    root = str(home)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return sorted(points)


def leaked_loop_devices(home: Path) -> list[str]:
    root = str(home) + "/"
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        target = backing.read_text().strip()
        if target.startswith(root):
            found.append(f"/dev/{backing.parent.parent.name} -> {target}")
    return sorted(found)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# --- file descriptors -----------------------------------------------------------------------
def open_fds(pid: int, ignore: set[str] | None = None) -> dict[int, str]:
    """fd -> what it points at (``socket:[inode]``, a path, ``anon_inode:...``), but for
    targets in ``ignore``."""
    fds = {}
    for entry in _scandir(f"/proc/{pid}/fd"):
        try:
            fds[int(entry.name)] = str(Path(entry.path).readlink())
        except OSError:
            continue  # closed while we read
    skip = (ignore or set()) | {f"/proc/{pid}/fd"}  # the listing's own fd, when pid is ours
    return {fd: target for fd, target in fds.items() if target not in skip}


def serving(port: int) -> set[str]:
    """The ``socket:[inode]`` of every established TCP connection to local ``port``: the
    clients' own connections (a server that never closes a finished one shows it in
    CLOSE_WAIT, which is not excluded)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            if local_port == port and parts[3] == TCP_ESTABLISHED:
                found.add(f"socket:[{parts[9]}]")
    return found


def fd_growth(before: dict[int, str], after: dict[int, str]) -> list[str]:
    """The fds beyond the earlier count, named: numbers that were not open before first,
    then reused numbers pointing elsewhere. Growth, not difference: a connection that
    replaced another is not a leak."""
    extra = len(after) - len(before)
    new = [f"fd {fd} -> {t}" for fd, t in sorted(after.items()) if fd not in before]
    reused = [f"fd {fd} -> {t}" for fd, t in sorted(after.items()) if before.get(fd, t) != t]
    return (new + reused)[: max(0, extra)]


def fd_growth_pooled(
    before: dict[int, str], after: dict[int, str], database: str, pool_idle: int
) -> list[str]:
    """``fd_growth``, but the SQLite ``database``'s connections may grow up to the
    ``pool_idle`` connections its pool keeps open once used (more concurrent requests than
    the warm-up saw open more); a connection is its file and its -wal or -journal."""
    (db_before, rest_before), (db_after, rest_after) = (
        _split(before, database),
        _split(after, database),
    )
    grown = fd_growth(rest_before, rest_after)
    connections = sum(target == database for target in db_after.values())
    if connections > max(pool_idle, sum(t == database for t in db_before.values())):
        grown += fd_growth(db_before, db_after)
    return grown


def _split(fds: dict[int, str], database: str) -> tuple[dict[int, str], dict[int, str]]:
    """(the database's fds, the others)"""
    db = {fd: t for fd, t in fds.items() if t == database or t.startswith(database + "-")}
    return db, {fd: t for fd, t in fds.items() if fd not in db}


def _scandir(path: str) -> Iterator[os.DirEntry[str]]:
    try:
        yield from os.scandir(path)
    except FileNotFoundError:
        return


# --- all of it ------------------------------------------------------------------------------
def find_leaks(
    home: Path,
    sandbox_ids: set[str],
    *,
    seen: dict[ProcessKey, str] | None = None,
    nft_gids: set[int] | None = None,
    nft_table_name: str = hostfilter.TABLE,
    cgroup_subtrees: Iterable[Path] | None = None,
) -> Leaks:
    """What the run of ``home`` left behind after its server exited (fds are checked while
    the server runs: see ``fd_growth``)."""
    ids = sandbox_ids | set(sandbox_folders(home))
    return Leaks(
        processes=leaked_processes(home, ids, seen),
        sandbox_folders=sandbox_folders(home),
        cgroups=leaked_cgroups(ids, cgroup_subtrees),
        nft_entries=leaked_nft(ids, nft_gids or set(), nft_table_name),
        mounts=leaked_mounts(home),
        loop_devices=leaked_loop_devices(home),
    )


def nft_available() -> bool:
    return hostfilter.find_nft() is not None and shutil.which("slirp4netns") is not None
