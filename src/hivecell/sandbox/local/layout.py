"""Where one local sandbox keeps its files on the host.

Stdlib only, and no dataclasses (importing them costs the supervisor ~10 ms).

    <home>/sandboxes/<id>/
        meta.json        SandboxInfo + supervisor pid (written by the provider)
        plan.json        what the supervisor runs (written by the provider before each start)
        seccomp.bpf      the box's compiled seccomp filter (written with plan.json)
        exit.json        how the last run ended (written by the supervisor)
        sandbox.log      supervisor, bwrap, slirp4netns, Xvfb and guest output
        network.jsonl    a nat box's connections and DNS questions (written by the supervisor)
        etc/             passwd, group, hosts, ... bound read-only over the sandbox's /etc
        disk.img         the size-capped filesystem mounted on disk/ (as root; see disk.py)
        disk/            everything the box can write on host disk, under one cap:
            home/        /home/user
            shared/      /shared (inbox, outbox, workspace)
            run/         /run/hivecell (x11vnc's own socket and log)
        sockets/         guest.sock, vnc.sock: bound by the supervisor, never in the box

Only disk/home/, disk/shared/ and disk/run/ are in the box (and owned by the sandbox's host
uid when hivecell runs as root). Everything the host reads, writes or connects to lives
outside them, so the box cannot swap it for a link: the guest gets its listening sockets as
open fds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SHARED_FOLDERS = ("inbox", "outbox", "workspace")
SUPERVISOR_MODULE = "hivecell.sandbox.local.supervisor"


class Layout:
    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @classmethod
    def of(cls, home: Path, sandbox_id: str) -> Layout:
        return cls(home / "sandboxes" / sandbox_id)

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
    def seccomp(self) -> Path:
        return self.root / "seccomp.bpf"

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
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def disk_image(self) -> Path:
        return self.root / "disk.img"

    @property
    def disk(self) -> Path:
        return self.root / "disk"

    @property
    def home(self) -> Path:
        return self.disk / "home"

    @property
    def shared(self) -> Path:
        return self.disk / "shared"

    @property
    def run(self) -> Path:
        return self.disk / "run"

    @property
    def sockets(self) -> Path:
        return self.root / "sockets"

    @property
    def guest_socket(self) -> Path:
        return self.sockets / "guest.sock"

    @property
    def vnc_socket(self) -> Path:
        return self.sockets / "vnc.sock"

    def writable_dirs(self) -> list[Path]:
        return [self.etc, self.home, self.run, *(self.shared / d for d in SHARED_FOLDERS)]

    def box_dirs(self) -> list[Path]:
        """The folders the box writes: owned by its host uid, parents first."""
        return [self.home, self.run, self.shared, *(self.shared / d for d in SHARED_FOLDERS)]

    def record_exit(self, status: str, detail: str, code: int | None = None) -> None:
        """How the last run ended, for ``list``/``info`` once nothing runs any more."""
        record = {"status": status, "detail": detail, "code": code, "time": time.time()}
        tmp = self.exit.with_name(f"exit.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.exit)
