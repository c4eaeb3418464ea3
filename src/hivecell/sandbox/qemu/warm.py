"""Warm states: a booted desktop saved once per template and shape, so VMs start in a second.

After a template's first boot with a given shape (memory, CPUs, screen, desktop, disk size,
accelerator, and the guest agent's version), its running VM is saved: RAM and devices into
``state.bin``, its disk overlay frozen beside it. A new sandbox of that shape is an overlay
on that frozen disk, started with ``-incoming`` from the state: no kernel boot, no desktop
start, no agent imports. Stored with the template (``templates/NAME/warm/KEY/``), so removing
or rebuilding a template removes its warm states too (both are refused while VMs use it).

What a clone must not share with its siblings is renewed after the restore (see
guestctl.GuestControl.come_back and the ``vmgenid`` device): clock, hostname, randomness.
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
from hivecell.sandbox.qemu.template import Template

FORMAT = 3  # bump when what a warm state holds changes (devices, steps)


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
    def record(self) -> Path:
        return self.root / "warm.json"

    def usable(self) -> bool:
        """Complete, and its disk's backing files all there (``qemu-img`` follows them)."""
        if not (self.record.is_file() and self.state.is_file() and self.disk.is_file()):
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
def locked(template: Template, warm_key: str) -> Iterator[None]:
    """One builder per warm state; the others wait, then use what it built."""
    folder(template).mkdir(parents=True, exist_ok=True)
    fd = os.open(
        folder(template) / f".lock-{warm_key}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def scratch(template: Template, warm_key: str) -> Path:
    """Where the warm state's VM runs; short, for unix socket paths."""
    path = folder(template) / f"b-{warm_key[:8]}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    return path


def keep(built: Path, disk: Path, state: Path, target: WarmState, seconds: float) -> None:
    """Move a finished build's disk and state into place (atomically: the record last)."""
    target.root.mkdir(parents=True, exist_ok=True)
    disk.replace(target.disk)
    state.replace(target.state)
    record = {"built_at": time.time(), "build_seconds": round(seconds, 1)}
    record["state_bytes"] = target.state.stat().st_size
    tmp = target.record.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(target.record)
    shutil.rmtree(built, ignore_errors=True)
