"""Warm states: a booted desktop saved once per template and shape, so VMs start in a second.

After a template's first boot with a given shape (memory, CPUs, screen, desktop, disk size,
accelerator, and the guest agent's version), its running VM is saved: devices into
``state.bin``, the RAM it uses into ``state.ram`` (ramfile.py; its page cache dropped and
its free pages ballooned out first), its disk overlay frozen beside it. A new sandbox of that
shape is an overlay on that frozen disk, started with ``-incoming`` from the state: no kernel
boot, no desktop start, no agent imports. Stored with the template
(``templates/NAME/warm/KEY/``), so removing or rebuilding a template removes its warm states
too (both are refused while VMs use it).

What a clone must not share with its siblings is renewed after the restore (see
guestctl.GuestControl.come_back and the ``vmgenid`` device): clock, hostname, randomness.

Every hivecell version has its own guest agent, so its own warm states: those of other
versions are pruned when a new one is saved, unless a VM still stands on one (its disk's
backing file). A clone registers itself in the state's ``users/`` (its folder's path) while
holding the state's lock shared; pruning takes it exclusively, without waiting, and also
reads the template's home's ``vms/`` (clones made before registration existed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.qemu import ramfile
from hivecell.sandbox.qemu.template import Template

FORMAT = 4  # bump when what a warm state holds changes (devices, steps)
USERS = "users"


class WarmState:
    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def state(self) -> Path:
        return self.root / "state.bin"

    @property
    def ram(self) -> Path:
        return ramfile.path_for(self.state)

    @property
    def record(self) -> Path:
        return self.root / "warm.json"

    @property
    def users(self) -> Path:
        return self.root / USERS

    def register(self, sandbox_root: Path) -> None:
        """A VM whose disk stands on this state's (call with the state's lock held shared)."""
        self.users.mkdir(exist_ok=True)
        where = str(sandbox_root.resolve())
        name = f"{sandbox_root.name}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"
        (self.users / name).write_text(where)

    def in_use(self) -> list[str]:
        """The registered VMs' folders that still exist (each keeps this state alive)."""
        alive = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.users.iterdir()):
                with contextlib.suppress(OSError):
                    if Path(entry.read_text()).is_dir():
                        alive.append(entry.name)
        return alive

    def made_by(self) -> tuple[str | None, int | None]:
        """(guest agent version, FORMAT) recorded when saved; None for older records."""
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None, None
        return record.get("guest"), record.get("format")

    def usable(self) -> bool:
        """Complete, and its disk's backing files all there (``qemu-img`` follows them)."""
        parts = (self.record, self.state, self.ram, self.disk)
        if not all(part.is_file() for part in parts):
            return False
        checked = subprocess.run(
            ["qemu-img", "info", "--backing-chain", "-U", str(self.disk)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        return checked.returncode == 0


def key(template: Template, spec: SandboxSpec, accel: str, guest_version: str) -> str:
    shape = {
        "format": FORMAT,
        "template": template.manifest.image_sha256,
        "guest": guest_version,
        "accel": accel,
        "memory_mb": spec.memory_mb or 4096,
        "cpus": max(1, round(spec.cpus or 2)),
        "screen": [spec.width, spec.height, spec.depth],
        "desktop": spec.desktop,
        "network": spec.network,
        "max_file_bytes": spec.max_file_bytes,
        "disk_mb": spec.disk_mb or 4096,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def folder(template: Template) -> Path:
    return template.root / "warm"


def state_for(template: Template, warm_key: str) -> WarmState:
    return WarmState(folder(template) / warm_key)


@contextlib.contextmanager
def locked(template: Template, warm_key: str, *, shared: bool = False) -> Iterator[None]:
    """One builder per warm state; the others wait, then use what it built. ``shared``: a
    clone being made on it (any number at once; pruning waits for none of them)."""
    folder(template).mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_file(template, warm_key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _lock_file(template: Template, warm_key: str) -> Path:
    return folder(template) / f".lock-{warm_key}"


def prune(template: Template, guest_version: str) -> list[str]:
    """Remove the warm states of other guest agent versions (or formats) that no VM stands
    on and nobody is building or cloning right now; returns their keys."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for root in sorted(folder(template).iterdir()):
            state = WarmState(root)
            if not root.is_dir() or not state.record.exists():
                continue  # a lock file, or a build in progress (its scratch or target)
            if state.made_by() == (guest_version, FORMAT):
                continue  # this version's: another shape, still wanted
            if _remove_unless_used(template, state):
                removed.append(root.name)
    return removed


def _remove_unless_used(template: Template, state: WarmState) -> bool:
    fd = os.open(
        _lock_file(template, state.root.name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # being built or cloned: it is wanted
        if state.in_use() or _home_vms_on(template, state.root.name):
            return False
        doomed = state.root.with_name(f".rm-{state.root.name}-{os.getpid()}")
        state.root.rename(doomed)  # never half a state under its key
        shutil.rmtree(doomed, ignore_errors=True)
        _lock_file(template, state.root.name).unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _home_vms_on(template: Template, warm_key: str) -> list[str]:
    """VMs of the template's own home (``home/templates/NAME`` -> ``home/vms``) recorded as
    made from this state: those made before clones registered themselves."""
    found = []
    for meta in sorted((template.root.parent.parent / "vms").glob("*/meta.json")):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(meta.read_text()).get("warm") == warm_key:
                found.append(meta.parent.name)
    return found


def scratch(template: Template, warm_key: str) -> Path:
    """Where the warm state's VM runs; short, for unix socket paths."""
    path = folder(template) / f"b-{warm_key[:8]}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    return path


def keep(
    built: Path, disk: Path, state: Path, target: WarmState, seconds: float, guest_version: str
) -> None:
    """Move a finished build's disk and state into place (atomically: the record last)."""
    target.root.mkdir(parents=True, exist_ok=True)
    disk.replace(target.disk)
    state.replace(target.state)
    ramfile.path_for(state).replace(target.ram)
    record: dict[str, object] = {"built_at": time.time(), "build_seconds": round(seconds, 1)}
    record.update(
        guest=guest_version,
        format=FORMAT,
        state_bytes=target.state.stat().st_size,
        ram_bytes=target.ram.stat().st_blocks * 512,
    )
    tmp = target.record.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(target.record)
    shutil.rmtree(built, ignore_errors=True)
