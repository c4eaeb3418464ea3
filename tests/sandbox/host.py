"""What the host sees of a sandbox, read straight from /proc (no provider code involved)."""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio

from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local import procs

# tests/sandbox/test_nat_host_isolation.py puts its test hosts' veths on /30s of this range and
# deletes them at any moment: another worker's address there can vanish mid-probe, and the
# probe then leaves the host and times out instead of being refused.
TEST_HOST_NET = ipaddress.ip_network("203.0.113.0/24")

Proc = tuple[int, int]  # (pid, start time in clock ticks): survives pid reuse


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of a live process, None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def process_tree(text: str) -> set[Proc]:
    """Processes whose command line mentions ``text``, plus all their descendants and the
    members of their boxes' PID namespaces (a zygote's boot process is not a descendant)."""
    stats = {pid: s for pid in _all_pids() if (s := _stat(pid)) is not None}
    roots = {pid for pid in stats if text in _cmdline(pid)}
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier} - found
        found |= frontier
    found |= procs.namespace_members(found) & stats.keys()
    return {(pid, stats[pid][1]) for pid in found}


def alive(procs: Iterable[Proc]) -> set[Proc]:
    return {(pid, start) for pid, start in procs if (s := _stat(pid)) is not None and s[1] == start}


def wait_all_gone(procs: set[Proc], timeout: float = 10.0) -> set[Proc]:
    """Those of ``procs`` still alive after ``timeout`` seconds (empty when all exited)."""
    deadline = time.monotonic() + timeout
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def commands(procs: Iterable[Proc]) -> list[str]:
    return [_cmdline(pid) for pid, _ in procs]


def mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


async def shell(guest: GuestClient, command: str, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = await guest.call("run_shell", {"command": command, **params})
    return result


async def sh_out(guest: GuestClient, command: str) -> str:
    """stdout of a command that must succeed."""
    result = await shell(guest, command)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


async def read_banner(endpoint: str, size: int) -> bytes:
    """The first bytes a server sends on ``unix:PATH`` or ``tcp:HOST:PORT``."""
    kind, _, where = endpoint.partition(":")
    if kind == "unix":
        stream: Any = await anyio.connect_unix(where)
    else:
        host, _, port = where.rpartition(":")
        stream = await anyio.connect_tcp(host, int(port))
    async with stream:
        data = b""
        with anyio.fail_after(10):
            while len(data) < size:
                data += await stream.receive(size - len(data))
    return data


def png_bytes(screenshot: dict[str, Any]) -> bytes:
    return base64.b64decode(screenshot["data"])


def host_ipv4_addresses() -> list[str]:
    """The host's own IPv4 addresses (the /32 LOCAL entries of the FIB), besides loopback and
    the test hosts' range."""
    lines = Path("/proc/net/fib_trie").read_text().splitlines()
    found = {prev.split()[-1] for prev, line in pairwise(lines) if "/32 host LOCAL" in line}
    return sorted(
        a
        for a in found
        if not a.startswith("127.") and ipaddress.ip_address(a) not in TEST_HOST_NET
    )
