"""Where one VM sandbox keeps its files on the host.

    <home>/vms/<id>/
        meta.json        SandboxInfo, the template and the supervisor's pid (the provider)
        plan.json        the QEMU command line the supervisor runs (before each start)
        exit.json        how the last run ended (the supervisor)
        sandbox.log      the supervisor's and QEMU's output and the guest's console, capped
        network.jsonl    a ``nat`` VM's connection log (local/netlog.py)
        disk.qcow2       the VM's disk: a copy-on-write overlay on its template's image
        shared/          /shared in the VM (inbox, outbox, workspace) over virtio-fs
        sockets/         guest.sock, vnc.sock (served by the supervisor), serial.sock
                         (QEMU's end of the agent's virtio-serial port), control.sock
                         (of the guest's root control port), virtiofs.sock (virtiofsd
                         serving shared/), qmp.sock, ops.sock (the supervisor's snapshot
                         requests)
        snapshots/NAME/  state.bin (RAM and devices) and disk.qcow2 of a snapshot

The VM sees nothing of the host but ``shared/``: it cannot plant links among the sockets.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SUPERVISOR_MODULE = "hivecell.sandbox.qemu.supervisor"
# The template's init stub, in the guest (template.py writes it; the kernel command line
# names it). Here: the supervisor must not import the template's models to know it.
STUB_INIT = "/sbin/hivecell-init"
SHARED_FOLDERS = ("inbox", "outbox", "workspace")


class VmLayout:
    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of(cls, home: Path, sandbox_id: str) -> VmLayout:
        return cls(home / "vms" / sandbox_id)

    @property
    def sandbox_id(self) -> str:
        return self.root.name

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def exit(self) -> Path:
        return self.root / "exit.json"

    @property
    def log(self) -> Path:
        return self.root / "sandbox.log"

    @property
    def network_log(self) -> Path:
        return self.root / "network.jsonl"

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def sockets(self) -> Path:
        return self.root / "sockets"

    @property
    def guest_socket(self) -> Path:
        return self.sockets / "guest.sock"

    @property
    def vnc_socket(self) -> Path:
        return self.sockets / "vnc.sock"

    @property
    def serial_socket(self) -> Path:
        return self.sockets / "serial.sock"

    @property
    def control_socket(self) -> Path:
        return self.sockets / "control.sock"

    @property
    def ops_socket(self) -> Path:
        return self.sockets / "ops.sock"

    @property
    def virtiofs_socket(self) -> Path:
        return self.sockets / "virtiofs.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.sockets / "qmp.sock"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def record_exit(self, status: str, detail: str, code: int | None = None) -> None:
        record = {"status": status, "detail": detail, "code": code, "time": time.time()}
        tmp = self.exit.with_name(f"exit.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.exit)
