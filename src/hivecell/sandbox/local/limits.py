"""Memory, process and CPU limits for one sandbox: cgroup v2, cgroup v1, or rlimits as fallback.

Stdlib only (the supervisor imports it). The provider *plans* (reads only: which mechanism is
usable here), the supervisor *sets up* the cgroups before each start, *joins* the bwrap
child to them between fork and exec (so nothing the box forks escapes), and *cleans up*
when the box has exited.

Each sandbox gets its own cgroup ``<ours>/hivecell/<id>``, where ``<ours>`` is the cgroup
the provider runs in: the box stays inside whatever limits the host puts on us (a systemd
unit's MemoryMax, a container's pids.max), and all boxes sit in one ``hivecell`` subtree that
is kept between runs. Never the hierarchy root: cgroup v2 forbids processes in a cgroup that
delegates controllers, so when ours holds processes (a login session, a service without
``DelegateSubgroup=``) the subtree goes under the nearest enclosing cgroup that can hold it
(see ``_v2_nearest``), and when only the root could, cgroups are unavailable.

The rlimit fallback is weaker and applied inside the box by ``hivecell.guest.boot``:
RLIMIT_NPROC counts the sandbox user's tasks in the sandbox's user namespace (which is what
we want; the box's user is never host root, see identity.py); RLIMIT_DATA caps each
process's private writable memory, not the box's total. RLIMIT_AS is not used: Xvfb and
Chromium reserve far more address space than they touch.
CPU has no rlimit equivalent (an RLIMIT_CPU kills, it does not throttle): without a cpu
controller the ceiling is reported as ``cpu=unenforced``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

TYPE_CHECKING = False  # not typing's: the supervisor of every sandbox imports this (~0.5 MB)
if TYPE_CHECKING:
    from typing import Any

BACKENDS = ("auto", "cgroup2", "cgroup1", "rlimit")
SUBTREE = "hivecell"  # our cgroup's child that holds every sandbox's cgroup
CPU_PERIOD_US = 100_000  # the kernel's default CFS period
UNENFORCED = "unenforced"  # a limit was asked for and this host cannot apply it
MOUNTINFO = Path("/proc/self/mountinfo")
SELF_CGROUP = Path("/proc/self/cgroup")


class LimitsUnavailable(ValueError):
    """The requested backend cannot limit a resource on this host."""


class LimitPlan:
    """What to limit and how; a plain class because the supervisor avoids dataclasses."""

    def __init__(
        self,
        memory_bytes: int | None,
        max_pids: int | None,
        memory: str = "none",
        pids: str = "none",
        cgroups: list[str] | None = None,
        settings: list[tuple[str, str]] | None = None,
        cpus: float | None = None,
        cpu: str = "none",
    ) -> None:
        self.memory_bytes = memory_bytes
        self.max_pids = max_pids
        self.cpus = cpus
        # mechanism per resource: cgroup2 | cgroup1 | rlimit | none (not asked) | unenforced
        self.memory = memory
        self.pids = pids
        self.cpu = cpu
        self.cgroups = cgroups or []  # dirs created at start, joined, removed at exit
        self.settings = settings or []  # (file, value) written in order; "?" = if present

    def describe(self) -> str:
        return f"memory={self.memory} pids={self.pids} cpu={self.cpu}"

    @property
    def rlimit_nproc(self) -> int | None:
        return self.max_pids if self.pids == "rlimit" else None

    @property
    def rlimit_data(self) -> int | None:
        return self.memory_bytes if self.memory == "rlimit" else None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LimitPlan:
        plan = cls(**data)
        plan.settings = [(str(f), str(v)) for f, v in plan.settings]
        return plan

    def __repr__(self) -> str:
        return f"LimitPlan({self.to_json()!r})"


# --- planning (provider side, read-only) --------------------------------------------------
def plan(
    memory_bytes: int | None,
    max_pids: int | None,
    name: str,
    backend: str = "auto",
    hierarchies: Hierarchies | None = None,
    *,
    cpus: float | None = None,
    box_is_host_root: bool = False,
) -> LimitPlan:
    """How to limit the sandbox ``name`` (its cgroups are ``<ours>/hivecell/<name>``).

    ``box_is_host_root``: whether the box's user is host root, in which case RLIMIT_NPROC
    does not bind and a process cap needs a pids cgroup. The local provider never runs a box
    as host root (as root each box gets its own uid, identity.py); the check stays for any
    caller that would.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown limits backend {backend!r}; use one of {', '.join(BACKENDS)}")
    found = hierarchies or Hierarchies.read()
    as_root = box_is_host_root
    result = LimitPlan(memory_bytes, max_pids, cpus=cpus)
    if memory_bytes is not None:
        result.memory = _place(result, found, "memory", memory_bytes, backend, name, as_root)
    if max_pids is not None:
        result.pids = _place(result, found, "pids", max_pids, backend, name, as_root)
    if cpus is not None:
        quota = max(1000, round(cpus * CPU_PERIOD_US))  # the kernel's minimum is 1 ms
        result.cpu = _place(result, found, "cpu", quota, backend, name, as_root)
    return result


def _place(
    result: LimitPlan,
    found: Hierarchies,
    controller: str,
    value: int,
    backend: str,
    name: str,
    as_root: bool,
) -> str:
    """Adds the cgroup and settings for one controller; returns the mechanism used."""
    reasons = []
    for version in ("cgroup2", "cgroup1"):
        if backend not in ("auto", version):
            continue
        parent, why = found.parent(version, controller)
        if parent is not None:
            cgroup = parent / SUBTREE / name
            _add(result, cgroup, _SETTINGS[version](cgroup, controller, value))
            return version
        reasons.append(f"{version}: {why}")
    if backend not in ("auto", "rlimit"):
        raise LimitsUnavailable(
            f"{backend} cannot limit {controller} here ({'; '.join(reasons)}); "
            "use limits backend 'auto'"
        )
    return _fallback(controller, backend, as_root, reasons)


def _fallback(controller: str, backend: str, as_root: bool, reasons: list[str]) -> str:
    """The mechanism when no cgroup can take ``controller``; refuses a process cap that
    would silently not hold."""
    if controller == "cpu":
        return UNENFORCED  # no rlimit throttles; reported, the box still runs
    if controller != "pids" or not as_root:
        return "rlimit"
    why = "; ".join(reasons) or "the rlimit backend was chosen"
    raise LimitsUnavailable(
        "cannot cap the sandbox's processes: no usable pids cgroup "
        f"({why}), and RLIMIT_NPROC does not bind for a box whose user is host root. "
        "Run hivecell where it can create cgroups (as root with cgroups mounted, or in a "
        "systemd unit with Delegate=yes and DelegateSubgroup=), or set max_pids to None "
        "to run without a process cap"
    )


def _add(result: LimitPlan, cgroup: Path, settings: list[tuple[str, str]]) -> None:
    if str(cgroup) not in result.cgroups:
        result.cgroups.append(str(cgroup))
    result.settings.extend(settings)


def _v2_settings(cg: Path, controller: str, value: int) -> list[tuple[str, str]]:
    if controller == "pids":
        return [(str(cg / "pids.max"), str(value))]
    if controller == "cpu":  # a ceiling ("quota period"), not a reservation
        weight = min(max(round(value / CPU_PERIOD_US * 100), 1), 10_000)  # default 100 = 1 CPU
        return [
            (str(cg / "cpu.max"), f"{value} {CPU_PERIOD_US}"),
            (str(cg / "cpu.weight"), str(weight)),
        ]
    # Without this the kernel pushes the excess to swap instead of enforcing the limit.
    return [(str(cg / "memory.max"), str(value)), (str(cg / "memory.swap.max?"), "0")]


def _v1_settings(cg: Path, controller: str, value: int) -> list[tuple[str, str]]:
    if controller == "pids":
        return [(str(cg / "pids.max"), str(value))]
    if controller == "cpu":
        shares = min(max(round(value / CPU_PERIOD_US * 1024), 2), 262_144)  # 1024 = 1 CPU
        return [
            (str(cg / "cpu.cfs_period_us"), str(CPU_PERIOD_US)),
            (str(cg / "cpu.cfs_quota_us"), str(value)),
            (str(cg / "cpu.shares"), str(shares)),
        ]
    # memsw may never be below limit_in_bytes, so it goes second; absent without swap accounting.
    return [
        (str(cg / "memory.limit_in_bytes"), str(value)),
        (str(cg / "memory.memsw.limit_in_bytes?"), str(value)),
    ]


_SETTINGS = {"cgroup2": _v2_settings, "cgroup1": _v1_settings}


class Mount:
    def __init__(self, fstype: str, root: str, point: str, options: set[str]) -> None:
        self.fstype, self.root, self.point, self.options = fstype, root, point, options

    def folder(self, cgroup: str) -> Path:
        """Host folder of ``cgroup`` (a path in this hierarchy) under this mount."""
        if self.root != "/" and (cgroup == self.root or cgroup.startswith(self.root + "/")):
            cgroup = cgroup[len(self.root) :]
        return Path(self.point) / cgroup.lstrip("/")


class Hierarchies:
    """The cgroup mounts and our own place in each hierarchy."""

    def __init__(self, mounts: list[Mount], own: dict[str, str]) -> None:
        self.mounts = mounts
        self.own = own  # controller ("" for the v2 hierarchy) -> our cgroup path

    @classmethod
    def read(cls) -> Hierarchies:
        return cls.parse(MOUNTINFO.read_text(), SELF_CGROUP.read_text())

    @classmethod
    def parse(cls, mountinfo: str, self_cgroup: str) -> Hierarchies:
        mounts = []
        for line in mountinfo.splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                mounts.append(Mount(tail[0], fields[3], fields[4], set(tail[2].split(","))))
        own: dict[str, str] = {}
        for line in self_cgroup.splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
        return cls(mounts, own)

    def parent(self, version: str, controller: str) -> tuple[Path | None, str]:
        """Our own cgroup for ``controller``, under which the ``hivecell`` subtree goes;
        (None, why) if it cannot hold it."""
        if version == "cgroup2":
            return self._v2_parent(controller)
        return self._v1_parent(controller)

    def _v1_parent(self, controller: str) -> tuple[Path | None, str]:
        own = self.own.get(controller)
        for mount in self.mounts:
            if mount.fstype == "cgroup" and controller in mount.options and own is not None:
                parent = mount.folder(own)
                if _writable(parent, parent / SUBTREE):
                    return parent, ""
                return None, f"{parent} is not writable"
        return None, f"no {controller} hierarchy mounted"

    def _v2_parent(self, controller: str) -> tuple[Path | None, str]:
        own = self.own.get("")
        for mount in self.mounts:
            if mount.fstype == "cgroup2" and own is not None:
                return _v2_nearest(mount.folder(own), Path(mount.point), controller)
        return None, "no cgroup2 hierarchy mounted"


def _v2_nearest(own: Path, root: Path, controller: str) -> tuple[Path | None, str]:
    """Our own cgroup if it can hand ``controller`` down, else the nearest ancestor that can;
    never the hierarchy root.

    v2 allows no processes in a cgroup that delegates, and ours usually holds some (a login
    session's scope, a service without ``DelegateSubgroup=``). The nearest enclosing cgroup
    that can (the service with ``Delegate=yes`` + ``DelegateSubgroup=``, else the slice) keeps
    the boxes inside that one's limits, though outside a plain service's own."""
    why = _v2_cannot_delegate(own, controller, is_root=own == root)
    if not why:
        return own, ""
    for ancestor in own.parents:
        if ancestor == root or not ancestor.is_relative_to(root):
            break
        if not _v2_cannot_delegate(ancestor, controller, is_root=False):
            return ancestor, ""
    return None, why


def _writable(parent: Path, subtree: Path) -> bool:
    if subtree.is_dir():
        return os.access(subtree, os.W_OK)
    return os.access(parent, os.W_OK)


def _v2_cannot_delegate(parent: Path, controller: str, *, is_root: bool) -> str:
    """Why children of ``parent`` cannot get ``controller`` ("" if they can).

    v2 allows no processes in a cgroup that hands controllers down (except the root)."""
    try:
        available = (parent / "cgroup.controllers").read_text().split()
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        busy = bool((parent / "cgroup.procs").read_text().strip())
    except OSError as exc:
        return f"cannot read {parent}: {exc.strerror}"
    if controller not in available:
        return f"{parent} has no {controller} controller"
    if not _writable(parent, parent / SUBTREE):
        return f"{parent} is not writable"
    if controller in enabled or is_root or not busy:
        return ""
    return f"our cgroup {parent} holds processes, so it cannot delegate {controller}"


# --- supervisor side ------------------------------------------------------------------------
def setup(limits: LimitPlan) -> None:
    """Create the cgroups and write the limits. Raises OSError if the host refuses."""
    for cg in map(Path, limits.cgroups):
        wanted = _controllers(limits, cg)
        _enable_v2_controllers(cg.parent.parent, wanted)  # ours -> hivecell
        cg.parent.mkdir(exist_ok=True)  # the hivecell subtree, shared by every box
        _enable_v2_controllers(cg.parent, wanted)  # hivecell -> the box
        cg.mkdir(exist_ok=True)
    for target, value in limits.settings:
        optional = target.endswith("?")
        path = Path(target.rstrip("?"))
        if optional and not path.exists():
            continue
        path.write_text(value)
    _rebalance_cpu(limits)


def _controllers(limits: LimitPlan, cg: Path) -> set[str]:
    """The controllers whose files the plan writes in ``cg`` (memory.max -> memory)."""
    return {Path(f).name.split(".")[0] for f, _ in limits.settings if Path(f).parent == cg}


def _enable_v2_controllers(parent: Path, wanted: set[str]) -> None:
    control = parent / "cgroup.subtree_control"
    if not control.exists():
        return  # cgroup v1
    missing = wanted - set(control.read_text().split())
    if missing:
        control.write_text(" ".join(f"+{c}" for c in sorted(missing)))


def join(limits: LimitPlan) -> None:
    """Move the calling process into the sandbox's cgroups (runs between fork and exec)."""
    pid = str(os.getpid())
    for cg in limits.cgroups:
        Path(cg, "cgroup.procs").write_text(pid)


def cleanup(limits: LimitPlan, timeout: float = 5.0) -> list[str]:
    """Remove the cgroups once empty; returns those still left (busy or refused)."""
    left = [cg for cg in limits.cgroups if Path(cg).is_dir()]
    deadline = time.monotonic() + timeout
    while left:
        left = [cg for cg in left if not _try_rmdir(cg)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # the kernel frees a dying pid namespace asynchronously
    _rebalance_cpu(limits)
    return left


# (weight file, its default, its maximum) for cgroup v2 and v1
_WEIGHTS = (("cpu.weight", 100, 10_000), ("cpu.shares", 1024, 262_144))


def _rebalance_cpu(limits: LimitPlan) -> None:
    """Give the hivecell cgroup the sum of its boxes' CPU weights.

    The scheduler weighs a cgroup against its siblings as one: with the default weight all
    boxes together would get the share of a single process on a busy host (and boot slowly),
    while each box's weight (1 CPU = the default) makes N boxes weigh like N VMs of their
    size. Best effort, last writer wins: a box starting meanwhile is counted at the next start
    or stop."""
    subtrees = {Path(f).parent.parent for f, _ in limits.settings if Path(f).name in _NAMES}
    for subtree in subtrees:
        for name, default, maximum in _WEIGHTS:
            if (subtree / name).exists():
                _write_weight(subtree, name, default, maximum)


_NAMES = {name for name, _, _ in _WEIGHTS}


def _write_weight(subtree: Path, name: str, default: int, maximum: int) -> None:
    try:
        total = sum(int((c / name).read_text()) for c in subtree.iterdir() if (c / name).is_file())
        (subtree / name).write_text(str(min(max(total, default), maximum)))
    except (OSError, ValueError):
        pass  # a box went away meanwhile; the next start or stop rebalances


def kill_members(limits: LimitPlan) -> None:
    """SIGKILL whatever is still in the box's cgroups (only the box's own processes are put
    there). For a destroy after the supervisor died: the box's processes normally die with
    it, but on a loaded host some outlived the wait for empty cgroups."""
    for cg in limits.cgroups:
        folder = Path(cg)
        kill = folder / "cgroup.kill"  # cgroup v2: the kernel kills them all, no pid races
        try:
            if kill.exists():
                kill.write_text("1")
                continue
            pids = (folder / "cgroup.procs").read_text().split()
        except OSError:  # already gone
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def _try_rmdir(cg: str) -> bool:
    try:
        Path(cg).rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
