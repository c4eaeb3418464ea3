"""The DNS server a ``nat`` box asks (127.0.0.53 inside it): the allowlist's name half.

It runs in the supervisor, on the host side, but listens on sockets made in the box's
network namespace (a thread joins it just long enough to bind them), so the box reaches it
without any hole in the host filter and cannot stop or replace it (port 53 needs a
capability the box lacks, and it is ours). slirp4netns's own DNS (10.0.2.3) is disabled.

For each question: a name the task's allowlist does not cover gets NXDOMAIN without being
sent anywhere (so DNS cannot carry data out to other domains either); an allowed one is
forwarded to the host's resolvers, the A/AAAA addresses of the answer are added to the
box's allowed set in the host filter *before* the answer goes back, and the question is
logged. Without an allowlist every name is forwarded. Queries are plain UDP or TCP
(length-prefixed); names must be letters, digits, ``-`` and ``_`` (anything else is refused,
so a label with a dot inside cannot pass for a subdomain).

Stdlib only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

LISTEN = ("127.0.0.53", 53)
RESOLV_CONF = Path("/etc/resolv.conf")
CLONE_NEWNET = 0x40000000
UPSTREAM_TIMEOUT = 3.0
MAX_WORKERS = 32  # questions answered at once; more get SERVFAIL
TCP_IDLE = 10.0
QTYPES = {1: "A", 28: "AAAA", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT", 33: "SRV", 65: "HTTPS"}
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, REFUSED = 0, 1, 2, 3, 5

# name -> allowed?; (name, [(address, ttl)]) -> None, raising to refuse the answer;
# (name, qtype, allowed, detail) -> None
Allows = Callable[[str], bool]
OnAnswer = Callable[[str, list[tuple[str, int]]], None]
OnQuestion = Callable[[str, str, bool, str], None]


class Question:
    """The single question of a DNS message."""

    def __init__(self, name: str, qtype: int, end: int) -> None:
        self.name = name
        self.qtype = qtype
        self.end = end  # offset just past the question

    @classmethod
    def parse(cls, data: bytes) -> Question | None:
        """None for anything but one plain question with letter-digit-hyphen labels."""
        if len(data) < 12 or struct.unpack_from("!H", data, 4)[0] != 1:
            return None
        labels, pos = [], 12
        while pos < len(data):
            length = data[pos]
            pos += 1
            if length == 0:
                break
            label = data[pos : pos + length]
            if length > 63 or len(label) != length or not _plain(label):
                return None
            labels.append(label.decode("ascii").lower())
            pos += length
        else:
            return None
        if pos + 4 > len(data) or not labels:
            return None
        return cls(".".join(labels), struct.unpack_from("!H", data, pos)[0], pos + 4)

    @property
    def kind(self) -> str:
        return QTYPES.get(self.qtype, str(self.qtype))


class DnsProxy:
    """Our DNS server for one box."""

    def __init__(
        self,
        upstreams: list[str],
        allows: Allows,
        on_answer: OnAnswer,
        on_question: OnQuestion,
        listen: tuple[str, int] = LISTEN,
    ) -> None:
        """``listen``: where in the namespace (a VM's guest reaches only 127.0.0.1)."""
        self.upstreams = upstreams
        self.listen = listen
        self.allows = allows
        self.on_answer = on_answer
        self.on_question = on_question
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._workers = threading.BoundedSemaphore(MAX_WORKERS)
        self._thread: threading.Thread | None = None

    def start(self, child_pid: int) -> None:
        """Listen inside the network namespace of ``child_pid``; answer from a thread."""
        self._udp, self._tcp = _listen_in(child_pid, self.listen)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._udp = self._tcp = None
        self._wake_r = self._wake_w = -1

    # --- serving ------------------------------------------------------------------------------
    def _serve(self) -> None:
        udp, tcp = self._udp, self._tcp
        assert udp is not None and tcp is not None
        while True:
            ready = select.select([udp.fileno(), tcp.fileno(), self._wake_r], [], [])[0]
            if self._wake_r in ready:
                return
            if udp.fileno() in ready:
                self._receive_udp(udp)
            if tcp.fileno() in ready:
                self._accept_tcp(tcp)

    def _receive_udp(self, udp: socket.socket) -> None:
        try:
            query, peer = udp.recvfrom(4096)
        except OSError:
            return
        if not self._spawn(self._answer_udp, udp, query, peer):
            _send_quietly(udp, _reply(query, SERVFAIL), peer)  # busy: say so, no time out

    def _accept_tcp(self, tcp: socket.socket) -> None:
        try:
            conn, _ = tcp.accept()
        except OSError:
            return
        if not self._spawn(self._answer_tcp, conn):
            conn.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> bool:
        if not self._workers.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                target(*args)
            finally:
                self._workers.release()

        threading.Thread(target=run, daemon=True).start()
        return True

    def _answer_udp(self, udp: socket.socket, query: bytes, peer: tuple[str, int]) -> None:
        _send_quietly(udp, self.resolve(query, tcp=False), peer)

    def _answer_tcp(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TCP_IDLE)
            while (query := _read_framed(conn)) is not None:
                reply = self.resolve(query, tcp=True)
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    # --- deciding -----------------------------------------------------------------------------
    def resolve(self, query: bytes, *, tcp: bool) -> bytes:
        """The reply to one query from the box."""
        question = Question.parse(query)
        flags = struct.unpack_from("!H", query, 2)[0] if len(query) >= 4 else 0
        if question is None or flags & 0xF800:  # a response, or not a standard QUERY
            return _reply(query, FORMERR)
        if not self.allows(question.name):
            self.on_question(question.name, question.kind, False, "not in the allowlist")
            return _reply(query, NXDOMAIN, question.end)
        response = self._ask_upstream(query, tcp)
        if response is None:
            self.on_question(question.name, question.kind, True, "no resolver answered")
            return _reply(query, SERVFAIL, question.end)
        try:
            addresses = _addresses(response, question)
            self.on_answer(question.name, addresses)
        except (ValueError, OSError) as exc:
            self.on_question(question.name, question.kind, True, f"answer refused: {exc}")
            return _reply(query, SERVFAIL, question.end)
        shown = ", ".join(a for a, _ in addresses) or "no address"
        self.on_question(question.name, question.kind, True, shown)
        return response

    def _ask_upstream(self, query: bytes, tcp: bool) -> bytes | None:
        for server in self.upstreams:
            try:
                response = _ask_tcp(server, query) if tcp else _ask_udp(server, query)
            except OSError:
                continue
            if response is not None:
                return response
        return None


def _listen_in(child_pid: int, listen: tuple[str, int]) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on ``listen`` in the box's network namespace."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def bind() -> None:  # network namespaces are per thread: this one joins and ends
        try:
            _join_netns(child_pid)
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made.append(udp)
            udp.bind(listen)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            made.append(tcp)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(listen)
            tcp.listen(64)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=bind, name="dns-bind")
    thread.start()
    thread.join()
    if failed:
        for sock in made:
            sock.close()
        raise OSError(f"cannot serve DNS inside the box: {failed[0]}")
    return made[0], made[1]


def _join_netns(child_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{child_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _plain(label: bytes) -> bool:
    return all(
        c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_" for c in label
    )


def _reply(query: bytes, rcode: int, end: int | None = None) -> bytes:
    """An answerless reply echoing the query's id and question (if it parsed)."""
    ident = query[:2] if len(query) >= 2 else b"\0\0"
    rd = (query[2] & 0x01) if len(query) >= 3 else 0
    flags = 0x8000 | (rd << 8) | 0x0080 | rcode  # QR, RD echoed, RA
    question = query[12:end] if end is not None else b""
    counts = struct.pack("!HHHH", 1 if question else 0, 0, 0, 0)
    return ident + struct.pack("!H", flags) + counts + question


def _addresses(response: bytes, question: Question) -> list[tuple[str, int]]:
    """(address, ttl) of every A/AAAA record in the answer; ValueError if malformed or not
    the answer to ``question``."""
    asked = Question.parse(response)
    if asked is None or (asked.name, asked.qtype) != (question.name, question.qtype):
        raise ValueError("the resolver answered another question")
    count = struct.unpack_from("!H", response, 6)[0]
    found, pos = [], asked.end
    for _ in range(count):
        pos = _skip_name(response, pos)
        if pos + 10 > len(response):
            raise ValueError("truncated record")
        rtype, _, ttl, length = struct.unpack_from("!HHIH", response, pos)
        data = response[pos + 10 : pos + 10 + length]
        pos += 10 + length
        if len(data) != length:
            raise ValueError("truncated record")
        if rtype == 1 and length == 4:
            found.append((socket.inet_ntop(socket.AF_INET, data), ttl))
        elif rtype == 28 and length == 16:
            found.append((socket.inet_ntop(socket.AF_INET6, data), ttl))
    return found


def _skip_name(data: bytes, pos: int) -> int:
    while pos < len(data):
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length
    raise ValueError("truncated name")


def _ask_udp(server: str, query: bytes) -> bytes | None:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(UPSTREAM_TIMEOUT)
        sock.connect((server, 53))
        sock.send(query)
        while True:  # connected: only the server's datagrams arrive
            response = sock.recv(65535)
            if response[:2] == query[:2]:
                return response


def _ask_tcp(server: str, query: bytes) -> bytes | None:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(UPSTREAM_TIMEOUT)
        sock.connect((server, 53))
        sock.sendall(struct.pack("!H", len(query)) + query)
        return _read_framed(sock)


def _read_framed(sock: socket.socket) -> bytes | None:
    """One length-prefixed DNS message; None at EOF or on a timeout."""
    try:
        header = _read_exactly(sock, 2)
        return _read_exactly(sock, struct.unpack("!H", header)[0]) if header else None
    except OSError:
        return None


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _send_quietly(sock: socket.socket, data: bytes, peer: tuple[str, int]) -> None:
    with contextlib.suppress(OSError):  # the box went away
        sock.sendto(data, peer)


def nameservers(resolv_conf: str) -> list[str]:
    """The resolvers a resolv.conf names, in order (IPv6 scopes kept: fe80::1%eth0)."""
    found: list[str] = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver" or fields[1] in found:
            continue
        bare = fields[1].split("%")[0]
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, bare)
            except OSError:
                continue
            found.append(fields[1])
            break
    return found
