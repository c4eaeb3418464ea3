"""Spare VNC sessions: taking over gets an interactive desktop without waiting for x11vnc.

x11vnc answers a new viewer late and in steps: accepting it and each handshake reply wait for
a turn of its main loop, so a new session took 100 ms to 1.1 s (bimodal; measured through the
relay: ~110 ms when quick, ~250 ms per handshake step when not). Taking over opens a new
session, so the person paid that wait.

While anyone watches a sandbox, the server therefore keeps one spare upstream session to its
x11vnc, already through the RFB handshake (3.8, security None, a shared ClientInit, its
ServerInit read and kept). A new viewer takes the spare: the server answers the viewer's
handshake itself from that ServerInit and then relays bytes as before, through the same input
gate. The viewers still connected open the next spare in the background, so x11vnc's wait is
paid ahead of time.

Why a spare per sandbox and not one upstream fanned out to every viewer (an RFB multiplexer):
viewers choose their own pixel format, encodings and update regions, which a multiplexer
would have to force to one choice or re-encode; input from several viewers would share one
x11vnc client; and one stream's bug would reach every viewer. With a spare each viewer keeps
its own x11vnc client as before: x11vnc does the per-viewer work, a viewer that sends garbage
or leaves mid-update affects only its own session, and the input gate is unchanged.

Cost: one extra idle x11vnc client per watched sandbox (it asks for nothing, so x11vnc sends
it nothing). A spare outlives its last viewer (the page reconnects on take over, and the new
viewer should find it); one whose sandbox is gone reads as closed and is dropped on the next
viewer's visit to any sandbox.
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from hivecell.sandbox.unixsock import connect_unix_nofollow

log = logging.getLogger(__name__)

VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
HANDSHAKE_TIMEOUT_S = 30.0  # x11vnc is slow to answer, not this slow: then it is stuck
MAX_NAME = 4096  # the desktop name in ServerInit; x11vnc's is short


class UpstreamError(Exception):
    """x11vnc's side of a handshake was not what a relay with security None can use."""


@dataclass(eq=False)
class Upstream:
    """A session with x11vnc past ServerInit: the viewer gets ``server_init`` from us."""

    stream: SocketStream
    reader: BufferedByteReceiveStream
    server_init: bytes

    async def receive(self, max_bytes: int) -> bytes:
        return await self.reader.receive(max_bytes)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def aclose(self) -> None:
        await self.stream.aclose()

    def alive(self) -> bool:
        """Whether x11vnc still holds the other end (a peek that never blocks)."""
        sock = self.stream.extra(SocketAttribute.raw_socket)
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return True  # nothing to read yet: open
        except OSError:
            return False


async def open_upstream(path: str) -> Upstream:
    """Connect to x11vnc's socket (no-follow) and do the client half of the handshake."""
    stream = await connect_unix_nofollow(path)
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
            return await _handshake(stream)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise


async def _handshake(stream: SocketStream) -> Upstream:
    reader = BufferedByteReceiveStream(stream)
    version = await reader.receive_exactly(12)
    if not version.startswith(b"RFB 003.") or version < VERSION:
        raise UpstreamError(f"x11vnc offers {version!r}; the relay needs RFB 3.8")
    await stream.send(VERSION)
    (count,) = await reader.receive_exactly(1)
    if SECURITY_NONE not in await reader.receive_exactly(count):
        raise UpstreamError("x11vnc does not offer security type None (run it with -nopw)")
    await stream.send(bytes([SECURITY_NONE]))
    if await reader.receive_exactly(4) != b"\0\0\0\0":
        raise UpstreamError("x11vnc refused security type None")
    await stream.send(b"\x01")  # ClientInit: shared, so viewers never push each other out
    head = await reader.receive_exactly(24)
    (name_length,) = struct.unpack_from(">I", head, 20)
    if name_length > MAX_NAME:
        raise UpstreamError(f"x11vnc's desktop name is {name_length} bytes long")
    return Upstream(stream, reader, head + await reader.receive_exactly(name_length))


@dataclass
class _Slot:
    spare: Upstream | None = None
    path: str = ""  # x11vnc's socket on the host, where the spare was opened
    filling: bool = False
    keepers: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class SparePool:
    """At most one ready upstream session per sandbox, kept filled while anyone watches."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def ready(self, sandbox_id: str) -> bool:
        slot = self._slots.get(sandbox_id)
        return slot is not None and slot.spare is not None

    def live_path(self, sandbox_id: str) -> str | None:
        """The socket of a sandbox whose spare is open now: x11vnc runs there, so a viewer
        need not ask the guest to start it (a guest round trip saved on take over)."""
        slot = self._slots.get(sandbox_id)
        if slot is None or slot.spare is None or not slot.spare.alive():
            return None
        return slot.path

    async def take(self, sandbox_id: str, path: str) -> Upstream:
        """The spare session if there is a live one, else a new one (the slow way)."""
        await self.prune()
        slot = self._slots.setdefault(sandbox_id, _Slot())
        spare, slot.spare = slot.spare, None
        slot.poke()  # the keepers open the next one
        if spare is not None:
            return spare
        return await open_upstream(path)

    async def keep(self, sandbox_id: str, path: str) -> None:
        """Beside each viewer, until it leaves: open a spare whenever there is none.

        One keeper opens at a time; if its viewer leaves meanwhile, another takes over. A
        failed open waits for the next viewer rather than retrying in a loop."""
        slot = self._slots.setdefault(sandbox_id, _Slot())
        slot.keepers += 1
        try:
            while True:
                if slot.spare is None and not slot.filling:
                    await self._fill(slot, path)
                await slot.changed.wait()
        finally:
            slot.keepers -= 1
            idle = not slot.keepers and slot.spare is None and not slot.filling
            if idle and self._slots.get(sandbox_id) is slot:
                del self._slots[sandbox_id]

    async def _fill(self, slot: _Slot, path: str) -> None:
        slot.filling = True
        try:
            spare = await open_upstream(path)
        except (OSError, UpstreamError, TimeoutError, anyio.EndOfStream) as exc:
            log.info("vnc spare: cannot open one for %s: %s", path, exc)
            return
        except BaseException:  # cancelled with its viewer: let another keeper do it
            slot.filling = False
            slot.poke()
            raise
        finally:
            slot.filling = False
        if slot.spare is None:
            slot.spare, slot.path = spare, path
            return
        with anyio.CancelScope(shield=True):
            await spare.aclose()

    async def prune(self) -> None:
        """Spares of sandboxes that are gone (or whose x11vnc stopped) read as closed."""
        for sandbox_id, slot in list(self._slots.items()):
            if slot.spare is not None and not slot.spare.alive():
                dead, slot.spare = slot.spare, None
                with anyio.CancelScope(shield=True):
                    await dead.aclose()
                if not slot.filling and not slot.keepers:
                    del self._slots[sandbox_id]
