"""A VM's snapshots on the host: ``<vm>/snapshots/NAME/{state.bin,state.ram,disk.qcow2,
snapshot.json}``.

``state.bin`` is the VM's devices at one moment, ``state.ram`` its RAM (ramfile.py) and
``disk.qcow2`` a copy of its disk
overlay taken while it was paused there (the copy keeps the overlay's backing file, so it
is only what the VM wrote). A restore starts QEMU on a copy of that disk with ``-incoming``
from the state. The record names the guest disk the VM ran then: the agent in the saved RAM
reads its modules from it, so a restore uses that one, not this hivecell's.
"""

from __future__ import annotations

import builtins
import re
import shutil
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from hivecell.errors import ConfigError, NotFound
from hivecell.sandbox.base import SnapshotInfo
from hivecell.sandbox.qemu import ramfile
from hivecell.sandbox.qemu.layout import VmLayout

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SnapshotRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    created_at: float
    guest_disk: str


class Snapshot:
    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def state(self) -> Path:
        return self.root / "state.bin"

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def record(self) -> Path:
        return self.root / "snapshot.json"

    def load(self) -> SnapshotRecord | None:
        try:
            return SnapshotRecord.model_validate_json(self.record.read_bytes())
        except (OSError, ValidationError):
            return None  # being written, or half removed: not a snapshot

    def info(self, sandbox_id: str, record: SnapshotRecord) -> SnapshotInfo:
        files = (self.state, ramfile.path_for(self.state), self.disk)
        size = sum(p.stat().st_blocks * 512 for p in files if p.exists())
        return SnapshotInfo(
            sandbox_id=sandbox_id, name=record.name, created_at=record.created_at, size_bytes=size
        )


def copy_disk(source: Path, target: Path) -> None:
    """A qcow2 overlay as a file (sparse, reflinked where the filesystem can)."""
    subprocess.run(
        ["cp", "--reflink=auto", "--sparse=always", str(source), str(target)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"snapshot name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit",
            op="snapshot",
            context={"name": name},
        )
    return name


def new(layout: VmLayout, name: str) -> tuple[Snapshot, Snapshot]:
    """The snapshot's final place and a scratch folder to write it in (renamed when done)."""
    final = Snapshot(layout.snapshots / check_name(name))
    if final.root.exists():
        raise ConfigError(
            f"sandbox {layout.sandbox_id} already has a snapshot {name!r}: delete it first "
            "or choose another name",
            op="snapshot",
            context={"id": layout.sandbox_id, "name": name},
        )
    layout.snapshots.mkdir(exist_ok=True)
    scratch = Snapshot(layout.snapshots / f".new-{name}-{time.monotonic_ns()}")
    scratch.root.mkdir()
    return final, scratch


def keep(scratch: Snapshot, final: Snapshot, guest_disk: Path) -> SnapshotRecord:
    record = SnapshotRecord(
        name=final.root.name, created_at=time.time(), guest_disk=str(guest_disk)
    )
    scratch.record.write_text(record.model_dump_json())
    try:
        scratch.root.rename(final.root)
    except OSError:  # another request took the name meanwhile
        shutil.rmtree(scratch.root, ignore_errors=True)
        raise ConfigError(
            f"a snapshot {final.root.name!r} appeared meanwhile; choose another name",
            op="snapshot",
        ) from None
    return record


def find(layout: VmLayout, name: str) -> tuple[Snapshot, SnapshotRecord]:
    snapshot = Snapshot(layout.snapshots / check_name(name))
    record = snapshot.load()
    if record is None:
        raise NotFound(
            f"sandbox {layout.sandbox_id} has no snapshot {name!r}; `hivecell sandbox "
            f"snapshots {layout.sandbox_id}` lists them",
            op="restore",
            context={"id": layout.sandbox_id, "name": name},
        )
    return snapshot, record


def restorable(layout: VmLayout, name: str) -> tuple[Snapshot, Path]:
    """The snapshot and the guest disk its agent needs."""
    snapshot, record = find(layout, name)
    guest_disk = Path(record.guest_disk)
    if not guest_disk.is_file():
        raise ConfigError(
            f"snapshot {name!r} was made by another hivecell version whose guest disk "
            f"({guest_disk}) is gone; this one cannot restore it",
            op="restore",
            context={"id": layout.sandbox_id, "name": name},
        )
    ram = ramfile.path_for(snapshot.state)
    if not ram.is_file():  # refused before the VM it would replace is stopped
        raise ConfigError(
            f"snapshot {name!r} has no RAM file ({ram.name}): an older hivecell kept the RAM "
            "inside state.bin, or the file was removed; this one cannot restore it "
            f"(hivecell sandbox snapshot-rm {layout.sandbox_id} {name})",
            op="restore",
            context={"id": layout.sandbox_id, "name": name},
        )
    return snapshot, guest_disk


def listing(layout: VmLayout) -> builtins.list[SnapshotInfo]:
    found = []
    if layout.snapshots.is_dir():
        for folder in layout.snapshots.iterdir():
            snapshot = Snapshot(folder)
            record = snapshot.load() if _NAME.match(folder.name) else None
            if record is not None:
                found.append(snapshot.info(layout.sandbox_id, record))
    return sorted(found, key=lambda info: info.created_at)


def delete(layout: VmLayout, name: str) -> None:
    snapshot, _ = find(layout, name)
    # renamed away first: a half-removed snapshot is never listed or restored
    doomed = layout.snapshots / f".gone-{name}-{time.monotonic_ns()}"
    snapshot.root.rename(doomed)
    shutil.rmtree(doomed)
