"""The connection log of a ``nat`` box: every flow and DNS question, allowed or refused.

The supervisor turns the host filter's flow counters (``hostfilter.Table.flows``) and its DNS
forwarder's decisions into JSON lines in ``<sandbox>/network.jsonl``, a file in the sandbox's
host folder that the box never sees. A flow is written when first seen and again whenever
its counters grow; readers keep the last line of each ``id``.

One line: ``{"id", "time", "last", "proto", "ip", "port", "host", "verdict", "sent",
"received", "detail"}``; ``proto`` is tcp, udp or dns (a question to our DNS: ``host`` is
the name asked, ``ip`` null). Past ``MAX_LOG_BYTES`` a last ``{"id", "truncated": true}``
line ends the file. ``host`` of a flow is the name our DNS answered with that
address, when it did. Bytes count IP packets (headers included) each way.

Stdlib only (the supervisor writes it; the provider reads it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from hivecell.sandbox.local.hostfilter import DENIED4, DENIED6, Table

FlowKey = tuple[str, str, int, int]  # address, protocol, destination port, source port
MAX_LOG_BYTES = 64 * 1024 * 1024  # a box asking millions of names must not fill the host
_DENIED = [ipaddress.ip_network(n) for n in (*DENIED4, *DENIED6)]


class ConnectionLog:
    """Appends one box's connections to its log file (thread-safe: DNS workers write too)."""

    def __init__(
        self, path: Path, restricted: bool, cidrs: list[str], max_bytes: int = MAX_LOG_BYTES
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.full = False  # past max_bytes: one last line says so, then nothing more
        self.restricted = restricted
        self._allowed_nets = [ipaddress.ip_network(c) for c in cidrs]
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # address -> the name our DNS answered it for
        self._flows: dict[tuple[str, FlowKey], dict[str, Any]] = {}
        self._seen: dict[tuple[str, FlowKey], tuple[int, int]] = {}  # set counters last read
        self._prefix = f"{os.getpid()}-{int(time.time())}"
        self._count = 0

    def question(self, name: str, qtype: str, allowed: bool, detail: str) -> None:
        """One DNS question the box asked our forwarder."""
        now = time.time()
        record = {
            "id": self._next_id(), "time": now, "last": now, "proto": "dns", "ip": None,
            "port": 53, "host": name, "verdict": "allowed" if allowed else "denied",
            "sent": 0, "received": 0, "detail": f"{qtype}: {detail}",
        }  # fmt: skip
        with self._lock:
            self._write([record])

    def named(self, addresses: list[str], name: str) -> None:
        with self._lock:
            for address in addresses:
                self._names[address] = name

    def update(self, table: Table, gid: int) -> None:
        """Record what changed in the filter's flow sets since the last call."""
        now = time.time()
        with self._lock:
            changed = []
            current: set[tuple[str, FlowKey]] = set()
            for family in ("4", "6"):
                sent, recv = table.flows(f"sent{family}", gid), table.flows(f"recv{family}", gid)
                for key, counter in sent.items():
                    changed += self._flow("allowed", key, counter, recv.get(key, (0, 0)), now)
                    current.add(("allowed", key))
                for key, counter in table.flows(f"refused{family}", gid).items():
                    changed += self._flow("denied", key, counter, (0, 0), now)
                    current.add(("denied", key))
            self._forget_expired(current)
            self._write(changed)

    def _forget_expired(self, current: set[tuple[str, FlowKey]]) -> None:
        """Flows whose set element expired (idle) are done: a later one with the same ports
        is a new record. Keeps the supervisor's memory flat on a long-lived box."""
        for ident in [i for i in self._seen if i not in current]:
            del self._seen[ident]
            self._flows.pop(ident, None)

    def _flow(
        self, verdict: str, key: FlowKey, sent: tuple[int, int], recv: tuple[int, int], now: float
    ) -> list[dict[str, Any]]:
        """The record of one flow if it is new or grew. A counter that went down means the
        set element expired and came back (or the table was rebuilt): it adds on."""
        ident = (verdict, key)
        seen = self._seen.get(ident, (0, 0))
        now_seen = (sent[1], recv[1])
        grew = [n - s if n >= s else n for n, s in zip(now_seen, seen, strict=True)]
        self._seen[ident] = now_seen
        record = self._flows.get(ident)
        if record is None:
            record = self._flows[ident] = self._new_flow(verdict, key, now)
        elif not any(grew):
            return []
        record["sent"] += grew[0]
        record["received"] += grew[1]
        record["last"] = now
        return [record]

    def _new_flow(self, verdict: str, key: FlowKey, now: float) -> dict[str, Any]:
        address, proto, port, _ = key
        return {
            "id": self._next_id(), "time": now, "last": now, "proto": proto, "ip": address,
            "port": port, "host": self._names.get(address), "verdict": verdict, "sent": 0,
            "received": 0, "detail": "" if verdict == "allowed" else self._reason(address),
        }  # fmt: skip

    def _reason(self, address: str) -> str:
        ip = ipaddress.ip_address(address)
        if _is_local(address) or ip.is_multicast:
            return "an address of this host"
        if any(ip in net for net in _DENIED) and not any(ip in n for n in self._allowed_nets):
            return "private, link-local or reserved range"
        if self.restricted:
            return "not in the allowlist"
        return "refused by the host filter"

    def _next_id(self) -> str:
        self._count += 1
        return f"{self._prefix}-{self._count}"

    def _write(self, records: list[dict[str, Any]]) -> None:
        if not records or self.full:
            return
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            if os.fstat(fd).st_size + len(data) > self.max_bytes:
                self.full = True
                data = json.dumps({"id": self._next_id(), "truncated": True}).encode() + b"\n"
            os.write(fd, data)
        finally:
            os.close(fd)


def _is_local(address: str) -> bool:
    """Whether ``address`` is one of this host's (binding to it works only then)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def read(path: Path) -> list[dict[str, Any]]:
    """The log as a list of connections (the last line of each id), oldest first."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as handle:
        text = handle.read().decode(errors="replace")
    found: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and "id" in record and "proto" in record:
            found[str(record["id"])] = record
    return list(found.values())
