"""Shared parts of the escape suite (``test_escape_*.py``): probes run inside real sandboxes,
host-side bait (marker files, listeners) and before/after snapshots of what the host holds.

Not a conftest.py (several suites share this folder): the test modules import what they use.
Probes are small Python programs written into the box's home and run with the box's own
``python3`` through ``run_shell``; their input arrives as JSON on stdin, their verdict leaves
as JSON on stdout, so no host path is ever quoted into a shell line.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivecell.sandbox.guest_client import GuestClient
from tests.sandbox.host import host_ipv4_addresses, shell

PROBE_DIR = "/home/user/.escape-probes"

# Tries to connect to every target: ["tcp", host, port], ["unix", path] or ["abstract", name].
# Prints {target-as-text: "connected" | errno name}. The box's own unix names are skipped
# (reported as "own"): reaching its own X server through @/tmp/.X11-unix/X0 is no escape.
CONNECT = r"""
import errno, json, socket, sys

def own_unix_names():
    lines = open("/proc/net/unix").read().splitlines()[1:]
    return {line.split()[-1] for line in lines if len(line.split()) > 7}

def attempt(target):
    kind = target[0]
    if kind == "tcp":
        host, port = target[1], target[2]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return "resolve:" + (exc.strerror or str(exc.errno))
        results = []
        for family, kind_, proto, _, address in infos:
            with socket.socket(family, kind_, proto) as sock:
                sock.settimeout(3)
                try:
                    sock.connect(address)
                    return "connected"
                except OSError as exc:
                    results.append(errno.errorcode.get(exc.errno or 0, str(exc)))
        return ",".join(results)
    address = target[1] if kind == "unix" else "\0" + target[1]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect(address)
            return "connected"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))

own = own_unix_names()
verdicts = {}
for target in json.load(sys.stdin):
    name = target[1] if target[0] == "unix" else "@" + target[1]
    if target[0] != "tcp" and name in own:
        verdicts[json.dumps(target)] = "own"
        continue
    verdicts[json.dumps(target)] = attempt(target)
print(json.dumps(verdicts))
"""

# For every path: can it be read (file: one byte; folder: listed) and written (file: opened
# for appending, nothing written; folder: a new file made in it, then removed)?
ACCESS = r"""
import errno, json, os, sys

def err(exc):
    return errno.errorcode.get(exc.errno or 0, str(exc))

def read(path):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
        return "yes"
    except OSError as exc:
        return err(exc)

def write(path, probe):
    try:
        if os.path.isdir(path):
            made = os.path.join(path, probe)
            os.close(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(made)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        return "yes"
    except OSError as exc:
        return err(exc)

request = json.load(sys.stdin)
print(json.dumps({p: [read(p), write(p, request["probe"])] for p in request["paths"]}))
"""


async def run_probe(guest: GuestClient, script: str, data: Any, timeout: float = 60) -> Any:
    """Run ``script`` with the box's python3, ``data`` as JSON on stdin; its JSON output."""
    name = hashlib.sha256(script.encode()).hexdigest()[:12] + ".py"
    await guest.call("write_file", {"path": f"{PROBE_DIR}/{name}", "content": script})
    command = f"python3 {PROBE_DIR}/{name}"
    result = await shell(guest, command, stdin=json.dumps(data), timeout=timeout)
    assert result["exit_code"] == 0, result
    return json.loads(result["stdout"])


def token(prefix: str = "hc-escape") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


# --- host state --------------------------------------------------------------------------------
def _digest(path: Path) -> str | None:
    try:
        if path.is_dir():
            return "dir"  # not its listing: other tests make files in /root or /tmp meanwhile
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


@dataclass
class HostState:
    """Digests of host paths: a file's bytes, a folder's names, or None when it is absent."""

    paths: list[Path]
    before: dict[Path, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.before = self.snapshot()

    def snapshot(self) -> dict[Path, str | None]:
        return {p: _digest(p) for p in self.paths}

    def assert_unchanged(self) -> None:
        after = self.snapshot()
        changed = {str(p): (self.before[p], a) for p, a in after.items() if a != self.before[p]}
        assert not changed, f"the host changed: {changed}"


@dataclass
class Markers:
    """Host-only files with random names and contents, in places a box must never see
    (the host's /tmp, /var/tmp and /dev/shm share their names with the box's own)."""

    name: str
    secret: str
    files: list[Path]


@contextlib.contextmanager
def host_markers() -> Iterator[Markers]:
    name, secret = token(), secrets.token_hex(16)
    files = [Path(folder, name) for folder in ("/root", "/tmp", "/var/tmp", "/dev/shm")]
    try:
        for path in files:
            path.write_text(secret)
        yield Markers(name, secret, files)
    finally:
        for path in files:
            path.unlink(missing_ok=True)


# --- host listeners ----------------------------------------------------------------------------
def host_addresses() -> list[str]:
    """The host's own addresses besides loopback: IPv4 from the FIB, IPv6 from if_inet6."""
    v4 = host_ipv4_addresses()
    v6 = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw, scope = line.split()[0], line.split()[3]
            if scope == "00":  # global scope only: link-local needs an interface
                v6.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return v4 + v6


def pending(server: socket.socket) -> bool:
    """Whether anyone completed a connection to ``server`` (the kernel queued it)."""
    server.setblocking(False)
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def host_unix_listeners() -> list[list[str]]:
    """Every listening unix socket of the host's network namespace, as probe targets."""
    targets = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            name = fields[7]
            targets.append(["abstract", name[1:]] if name.startswith("@") else ["unix", name])
    return targets


def link_counts(paths: list[Path]) -> dict[Path, int]:
    return {p: p.resolve().stat().st_nlink for p in paths}


def own_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
