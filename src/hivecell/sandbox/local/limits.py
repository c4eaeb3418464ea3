"""Memory and process limits for one sandbox: cgroup v2, cgroup v1, or rlimits as a last resort.

Stdlib only (the supervisor imports it). The provider *plans* (reads only: which mechanism is
usable here), the supervisor *sets up* the cgroups before each start, *joins* the bwrap
child to them between fork and exec (so nothing the box forks escapes), and *cleans up*
when the box has exited.

Each sandbox gets its own cgroup ``hivecell-<id>`` *under* the cgroup the provider runs
in, so the sandbox stays inside whatever limits the host already puts on us. cgroup v2
forbids processes in a cgroup that delegates controllers, so there we fall back to the
hierarchy root when our own cgroup cannot delegate (needs root).

The rlimit fallback is weaker and applied inside the box by ``hivecell.guest.boot``:
RLIMIT_NPROC counts the sandbox user's tasks in the sandbox's user namespace (which is what
we want; the box's user is never host root, see identity.py); RLIMIT_DATA caps each
process's private writable memory, not the box's total. RLIMIT_AS is not used: Xvfb and
Chromium reserve far more address space than they touch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

BACKENDS = ("auto", "cgroup2", "cgroup1", "rlimit")
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
    ) -> None:
        self.memory_bytes = memory_bytes
        self.max_pids = max_pids
        self.memory = memory  # mechanism per resource: cgroup2 | cgroup1 | rlimit | none
        self.pids = pids
        self.cgroups = cgroups or []  # dirs created at start, joined, removed at exit
        self.settings = settings or []  # (file, value) written in order; "?" = if present

    def describe(self) -> str:
        return f"memory={self.memory} pids={self.pids}"

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
) -> LimitPlan:
    """How to limit a sandbox whose cgroups will be called ``name``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown limits backend {backend!r}; use one of {', '.join(BACKENDS)}")
    found = hierarchies or Hierarchies.read()
    result = LimitPlan(memory_bytes, max_pids)
    if memory_bytes is not None:
        result.memory = _place(result, found, "memory", memory_bytes, backend, name)
    if max_pids is not None:
        result.pids = _place(result, found, "pids", max_pids, backend, name)
    return result


def _place(
    result: LimitPlan, found: Hierarchies, controller: str, value: int, backend: str, name: str
) -> str:
    """Adds the cgroup and settings for one controller; returns the mechanism used."""
    for version in ("cgroup2", "cgroup1"):
        parent = found.parent(version, controller) if backend in ("auto", version) else None
        if parent is not None:
            settings = _SETTINGS[version](parent / name, controller, value)
            _add(result, parent / name, settings)
            return version
    if backend not in ("auto", "rlimit"):
        raise LimitsUnavailable(
            f"{backend} has no writable {controller} controller here; use limits backend 'auto'"
        )
    # RLIMIT_NPROC counts the processes of the box's host uid, which is never root (the
    # kernel would not apply it to root): as root each box runs as its own uid (identity.py).
    return "rlimit"


def _add(result: LimitPlan, cgroup: Path, settings: list[tuple[str, str]]) -> None:
    if str(cgroup) not in result.cgroups:
        result.cgroups.append(str(cgroup))
    result.settings.extend(settings)


def _v2_settings(cg: Path, controller: str, value: int) -> list[tuple[str, str]]:
    if controller == "pids":
        return [(str(cg / "pids.max"), str(value))]
    # Without this the kernel pushes the excess to swap instead of enforcing the limit.
    return [(str(cg / "memory.max"), str(value)), (str(cg / "memory.swap.max?"), "0")]


def _v1_settings(cg: Path, controller: str, value: int) -> list[tuple[str, str]]:
    if controller == "pids":
        return [(str(cg / "pids.max"), str(value))]
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

    def parent(self, version: str, controller: str) -> Path | None:
        """Where to create a sandbox's cgroup for ``controller``; None if we cannot."""
        return self._v2_parent(controller) if version == "cgroup2" else self._v1_parent(controller)

    def _v1_parent(self, controller: str) -> Path | None:
        own = self.own.get(controller)
        for mount in self.mounts:
            if mount.fstype == "cgroup" and controller in mount.options and own is not None:
                parent = mount.folder(own)
                return parent if os.access(parent, os.W_OK) else None
        return None

    def _v2_parent(self, controller: str) -> Path | None:
        own = self.own.get("")
        for mount in self.mounts:
            if mount.fstype != "cgroup2" or own is None:
                continue
            for parent in (mount.folder(own), Path(mount.point)):
                if _v2_can_delegate(parent, controller, is_root=parent == Path(mount.point)):
                    return parent
        return None


def _v2_can_delegate(parent: Path, controller: str, *, is_root: bool) -> bool:
    """Whether children of ``parent`` can get ``controller`` (v2: no processes in inner nodes)."""
    try:
        available = (parent / "cgroup.controllers").read_text().split()
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        busy = bool((parent / "cgroup.procs").read_text().strip())
    except OSError:
        return False
    if controller not in available or not os.access(parent, os.W_OK):
        return False
    return controller in enabled or is_root or not busy


# --- supervisor side ------------------------------------------------------------------------
def setup(limits: LimitPlan) -> None:
    """Create the cgroups and write the limits. Raises OSError if the host refuses."""
    for cg in map(Path, limits.cgroups):
        _enable_v2_controllers(cg.parent)
        cg.mkdir(exist_ok=True)
    for target, value in limits.settings:
        optional = target.endswith("?")
        path = Path(target.rstrip("?"))
        if optional and not path.exists():
            continue
        path.write_text(value)


def _enable_v2_controllers(parent: Path) -> None:
    control = parent / "cgroup.subtree_control"
    if not control.exists():
        return  # cgroup v1
    wanted = {"memory", "pids"} & set((parent / "cgroup.controllers").read_text().split())
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
    return left


def _try_rmdir(cg: str) -> bool:
    try:
        Path(cg).rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
