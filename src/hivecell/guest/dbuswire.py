"""A small blocking D-Bus client that pipelines method calls: the accessibility walk's transport.

Why not jeepney's codec alone: it costs ~0.7 ms of pure Python per call (build + parse), and
a browser page takes hundreds of calls. This codec handles only what AT-SPI needs (method
calls with basic-typed arguments; any reply signature) and sends a whole batch before it
reads the replies, so a batch costs one round trip plus the apps' own work. jeepney still
does the authentication handshake and Hello.

Every read has a deadline: an app that never answers costs the batch its time budget, no
more (unanswered calls come back as ``None``).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from itertools import count
from typing import Any

from jeepney.io.blocking import open_dbus_connection

METHOD_CALL, METHOD_RETURN, ERROR = 1, 2, 3
_FLAGS = 0  # a reply is expected
_FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d"}
_ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4}
_ALIGN.update({"s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1})
MAX_MESSAGE = 64 * 1024 * 1024  # a reply larger than this is a hostile or broken peer


@dataclass(frozen=True)
class Call:
    dest: str
    path: str
    iface: str
    member: str
    sig: str = ""
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Reply:
    ok: bool
    body: tuple[Any, ...]  # the reply's arguments; for an error, (message,) if it has one
    error: str = ""  # the D-Bus error name when not ok


class BusError(Exception):
    """The bus connection failed or a peer sent something this codec cannot read."""


class Bus:
    def __init__(self, address: str, timeout: float = 2.0) -> None:
        try:
            conn = open_dbus_connection(address)
        except (OSError, ValueError) as exc:
            raise BusError(f"cannot connect to the bus at {address}: {exc}") from exc
        conn.selector.close()  # we read the socket ourselves
        self.sock: socket.socket = conn.sock
        self.sock.settimeout(timeout)
        self._serial = count(1_000_000)  # above jeepney's Hello serial
        self._buf = bytearray()  # what jeepney read past Hello is signals: dropped

    def close(self) -> None:
        self.sock.close()

    def call(self, call: Call, timeout: float) -> Reply | None:
        return self.calls([call], timeout)[0]

    def calls(
        self, calls: list[Call], timeout: float, quiet: float | None = None
    ) -> list[Reply | None]:
        """Send every call, then collect the replies until all came or ``timeout`` passed;
        with ``quiet``, also stop once no reply came for that long (a frozen peer among
        answering ones then costs ``quiet``, not the whole ``timeout``)."""
        deadline = time.monotonic() + timeout
        serials = [next(self._serial) for _ in calls]
        data = b"".join(encode_call(c, s) for c, s in zip(calls, serials, strict=True))
        self._send(data, deadline)
        wanted = {s: i for i, s in enumerate(serials)}
        replies: list[Reply | None] = [None] * len(calls)
        progress = time.monotonic()
        while wanted:
            until = deadline if quiet is None else min(deadline, progress + quiet)
            message = self._next_message(until)
            if message is None:
                break
            kind, reply_to, body = message
            index = wanted.pop(reply_to, None)
            if index is not None:
                replies[index] = _reply(kind, body)
                progress = time.monotonic()
        return replies

    def _send(self, data: bytes, deadline: float) -> None:
        try:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            self.sock.sendall(data)
        except OSError as exc:
            raise BusError(f"sending to the bus failed: {exc}") from exc

    def _next_message(self, deadline: float) -> tuple[int, int, tuple[Any, ...] | str] | None:
        while True:
            try:
                parsed = take_message(self._buf)
            except (struct.error, IndexError, ValueError, RecursionError) as exc:
                raise BusError(f"unreadable message on the bus: {exc}") from exc
            if parsed is not None:
                return parsed
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.sock.settimeout(left)
                chunk = self.sock.recv(1 << 18)
            except TimeoutError:
                return None
            except OSError as exc:
                raise BusError(f"reading from the bus failed: {exc}") from exc
            if not chunk:
                raise BusError("the bus closed the connection")
            self._buf += chunk


def _reply(kind: int, body: tuple[Any, ...] | str) -> Reply:
    if kind == METHOD_RETURN:
        return Reply(True, body if isinstance(body, tuple) else ())
    name, args = body if isinstance(body, tuple) else (body, ())
    return Reply(False, tuple(args), str(name))


# --- encoding ----------------------------------------------------------------------------
def _pad(out: bytearray, align: int) -> None:
    out += b"\0" * (-len(out) % align)


def _put_str(out: bytearray, value: str) -> None:
    raw = value.encode()
    out += struct.pack("<I", len(raw)) + raw + b"\0"


def _field(out: bytearray, code: int, sig: str, value: str) -> None:
    _pad(out, 8)
    out += bytes((code, 1)) + sig.encode() + b"\0"
    if sig == "g":
        raw = value.encode()
        out += bytes((len(raw),)) + raw + b"\0"
    else:
        _put_str(out, value)


def encode_body(sig: str, args: tuple[Any, ...]) -> bytes:
    """Basic types only (what AT-SPI method arguments use)."""
    out = bytearray()
    for code, value in zip(sig, args, strict=True):
        _pad(out, _ALIGN[code])
        if code in ("s", "o"):
            _put_str(out, value)
        elif code in _FIXED:
            out += struct.pack("<" + _FIXED[code], value)
        else:
            raise ValueError(f"argument type {code!r} is not supported")
    return bytes(out)


def encode_call(call: Call, serial: int) -> bytes:
    body = encode_body(call.sig, call.args)
    fields = bytearray()
    _field(fields, 1, "o", call.path)
    _field(fields, 2, "s", call.iface)
    _field(fields, 3, "s", call.member)
    _field(fields, 6, "s", call.dest)
    if call.sig:
        _field(fields, 8, "g", call.sig)
    head = struct.pack("<cBBBIII", b"l", METHOD_CALL, _FLAGS, 1, len(body), serial, len(fields))
    out = bytearray(head) + fields
    _pad(out, 8)
    return bytes(out) + body


# --- decoding ----------------------------------------------------------------------------
def take_message(buf: bytearray) -> tuple[int, int, tuple[Any, ...] | str] | None:
    """Remove one complete message from ``buf``: (type, reply serial, body); None if partial.

    For an error the body is (error name, args)."""
    if len(buf) < 16:
        return None
    order = "<" if buf[0:1] == b"l" else ">"
    kind = buf[1]
    body_len, _, fields_len = struct.unpack_from(order + "III", buf, 4)
    header_end = 16 + fields_len + (-(16 + fields_len) % 8)
    total = header_end + body_len
    if total > MAX_MESSAGE:
        raise BusError(f"a message of {total} bytes is larger than the {MAX_MESSAGE} allowed")
    if len(buf) < total:
        return None
    data = bytes(buf[:total])
    del buf[:total]
    fields, _ = _read(order, "a(yv)", data, 12)
    info = {code: value for code, value in fields}
    sig = info.get(8, "")
    body = _read_all(order, sig, data, header_end) if sig else ()
    reply_to = int(info.get(5, -1))
    if kind == ERROR:
        return kind, reply_to, (str(info.get(4, "")), body)
    return kind, reply_to, body


def _read_all(order: str, sig: str, data: bytes, pos: int) -> tuple[Any, ...]:
    values = []
    for one in split_signature(sig):
        value, pos = _read(order, one, data, pos)
        values.append(value)
    return tuple(values)


def split_signature(sig: str) -> list[str]:
    out, i = [], 0
    while i < len(sig):
        end = _type_end(sig, i)
        out.append(sig[i:end])
        i = end
    return out


def _type_end(sig: str, i: int) -> int:
    code = sig[i]
    if code == "a":
        return _type_end(sig, i + 1)
    if code in "({":
        depth, j = 0, i
        while True:
            if sig[j] in "({":
                depth += 1
            elif sig[j] in ")}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
    return i + 1


def _read(order: str, sig: str, data: bytes, pos: int) -> tuple[Any, int]:
    code = sig[0]
    pos += -pos % _ALIGN.get(code, 1)
    if code in _FIXED:
        fmt = order + _FIXED[code]
        value = struct.unpack_from(fmt, data, pos)[0]
        return (bool(value) if code == "b" else value), pos + struct.calcsize(fmt)
    if code in ("s", "o"):
        (size,) = struct.unpack_from(order + "I", data, pos)
        start = pos + 4
        return data[start : start + size].decode("utf-8", "replace"), start + size + 1
    if code == "g":
        size = data[pos]
        return data[pos + 1 : pos + 1 + size].decode(), pos + size + 2
    if code == "v":
        inner, pos = _read(order, "g", data, pos)
        return _read(order, inner, data, pos)
    if code == "a":
        return _read_array(order, sig[1:], data, pos)
    if code in "({":
        values = []
        for one in split_signature(sig[1:-1]):
            value, pos = _read(order, one, data, pos)
            values.append(value)
        return tuple(values), pos
    raise BusError(f"cannot read D-Bus type {code!r}")


def _read_array(order: str, item: str, data: bytes, pos: int) -> tuple[Any, int]:
    (size,) = struct.unpack_from(order + "I", data, pos)
    pos += 4
    pos += -pos % _ALIGN.get(item[0], 1)
    end = pos + size
    if end > len(data):
        raise BusError("an array runs past the end of its message")
    items = []
    while pos < end:
        value, pos = _read(order, item, data, pos)
        items.append(value)
    return items, pos
