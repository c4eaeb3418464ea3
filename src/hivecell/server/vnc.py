"""WebSocket ``/api/v1/sandboxes/{id}/vnc``: a byte relay between noVNC and a sandbox's x11vnc.

noVNC speaks RFB over a binary WebSocket (subprotocol ``binary``); the guest method
``start_vnc`` starts x11vnc, reachable on the host at ``SandboxInfo.vnc_endpoint`` (for the
local provider a socket outside the box that the guest relays to x11vnc, so the box cannot
point the host elsewhere). No websockify: the server answers the viewer's RFB handshake
itself from an upstream session that is already past ServerInit (usually a spare opened ahead
of time, see ``vncspare``: x11vnc is slow to greet a new viewer); after that each WebSocket
message is written to the socket as it is, and whatever the socket yields goes back as one
binary message.

A ``view_only=true`` connection never forwards input (keys, pointer, clipboard, resize). An
interactive one forwards input only while the server allows it, checked per message: the
desktop of a running task takes input only while a person has taken the task over, so
``handback`` demotes every interactive viewer at once, whatever the page does; a sandbox
without a task takes input from any interactive viewer.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import suppress
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket
from fastapi.params import Depends
from starlette.websockets import WebSocketDisconnect

from hivecell.errors import HivecellError
from hivecell.sandbox.base import SandboxProvider
from hivecell.server.vncspare import SparePool, Upstream, UpstreamError

log = logging.getLogger(__name__)

VNC_PATH = "/api/v1/sandboxes/{sandbox_id}/vnc"
SUBPROTOCOL = "binary"
READ_SIZE = 64 * 1024

# Close codes the page can tell apart (4000-4999 are the application's own range).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # a view-only browser sent something the filter cannot vouch for
CLOSE_UNAVAILABLE = 4404  # no such sandbox, or its VNC server cannot start

# sandbox id -> "unix:/host/path" of a running VNC server (starting it if needed)
VncResolver = Callable[[str], Awaitable[str]]
# sandbox id -> whether input from an interactive viewer reaches it now
DrivePolicy = Callable[[str], bool]


class RfbViolation(Exception):
    """The client stream cannot be parsed, so a view-only relay cannot tell input apart."""


# --- view-only filter ---------------------------------------------------------------------
# Client->server RFB messages by type: (header size, size of the variable part or None, input?)
# Sizes per RFC 6143 and the community extensions noVNC sends.
_SET_PIXEL_FORMAT, _SET_ENCODINGS, _FB_UPDATE_REQUEST = 0, 2, 3
_KEY, _POINTER, _CUT_TEXT = 4, 5, 6
_CONTINUOUS_UPDATES, _FENCE, _XVP, _SET_DESKTOP_SIZE, _QEMU = 150, 248, 250, 251, 255


def _message_size(buf: bytes | bytearray | memoryview) -> int | None:
    """Length of the client message at the start of ``buf``; None until enough is buffered."""
    kind = buf[0]
    fixed = {_SET_PIXEL_FORMAT: 20, _FB_UPDATE_REQUEST: 10, _KEY: 8, _POINTER: 6, _XVP: 4}
    fixed |= {_CONTINUOUS_UPDATES: 10, _QEMU: 12}
    if kind in fixed:
        if kind == _QEMU and len(buf) >= 2 and buf[1] != 0:
            raise RfbViolation(f"unknown QEMU client message {buf[1]}")
        return fixed[kind]
    if kind == _SET_ENCODINGS:
        return None if len(buf) < 4 else 4 + 4 * struct.unpack_from(">H", buf, 2)[0]
    if kind == _CUT_TEXT:  # a negative length is the extended-clipboard form
        return None if len(buf) < 8 else 8 + abs(struct.unpack_from(">i", buf, 4)[0])
    if kind == _FENCE:
        return None if len(buf) < 9 else 9 + buf[8]
    if kind == _SET_DESKTOP_SIZE:
        return None if len(buf) < 7 else 8 + 16 * buf[6]
    raise RfbViolation(f"unknown client message type {kind}")


_INPUT = frozenset({_KEY, _POINTER, _CUT_TEXT, _XVP, _SET_DESKTOP_SIZE, _QEMU})


class ViewOnlyFilter:
    """Passes the handshake and display requests of a client stream, drops its input.

    Assumes RFB 3.7/3.8 with security type None (x11vnc runs with -nopw behind the relay,
    which is the only way in); anything else closes the connection rather than guess.

    Memory is bounded: a message is buffered only until it is whole, and a message announcing
    more than ``MAX_MESSAGE`` bytes (the largest a viewer needs is a 65 535-entry
    SetEncodings, 256 KiB) ends the connection, so endless partial messages cannot grow it.
    """

    # ProtocolVersion, chosen security type, ClientInit: the client sends each one only after
    # the server's previous handshake message, so each is buffered whole and forwarded alone.
    _HANDSHAKE = (12, 1, 1)
    MAX_MESSAGE = 512 * 1024

    def __init__(
        self, may_drive: Callable[[], bool] = lambda: False, *, handshake_done: bool = False
    ) -> None:
        """``handshake_done``: the server answered the handshake itself (see
        ``answer_handshake``); the stream starts with client messages."""
        self._buf = bytearray()
        self._field = len(self._HANDSHAKE) if handshake_done else 0
        self._may_drive = may_drive  # asked per input message: input passes while True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        pos = 0  # consumed prefix, cut once at the end: no quadratic copying
        while pos < len(self._buf):
            with memoryview(self._buf) as whole, whole[pos:] as rest:  # released: resizable
                size = self._next_size(rest)
            if size is not None and size > self.MAX_MESSAGE:
                raise RfbViolation(f"a client message of {size} bytes is over the view-only cap")
            if size is None or len(self._buf) - pos < size:
                break
            message = bytes(self._buf[pos : pos + size])
            pos += size
            if self._field < len(self._HANDSHAKE):
                self._check_handshake(message)
                self._field += 1
                out += message
            elif message[0] not in _INPUT or self._may_drive():
                out += message
        del self._buf[:pos]
        return bytes(out)

    def _next_size(self, buf: memoryview) -> int | None:
        if self._field < len(self._HANDSHAKE):
            return self._HANDSHAKE[self._field]
        return _message_size(buf)

    def _check_handshake(self, message: bytes) -> None:
        if self._field == 0 and message[:11] not in (b"RFB 003.007", b"RFB 003.008"):
            raise RfbViolation(f"view-only relay needs RFB 3.7 or 3.8, got {message[:11]!r}")
        if self._field == 1 and message != b"\x01":
            raise RfbViolation(f"view-only relay needs security type None, got {message[0]}")


# --- relay --------------------------------------------------------------------------------
async def _browser_to_vnc(
    websocket: WebSocket, stream: Upstream, view_filter: ViewOnlyFilter
) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes") or (message.get("text") or "").encode()
        data = view_filter.feed(data)
        if data:
            await stream.send(data)


async def _vnc_to_browser(websocket: WebSocket, stream: Upstream) -> None:
    while True:
        try:
            data = await stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        await websocket.send_bytes(data)


async def answer_handshake(websocket: WebSocket, server_init: bytes) -> bytes:
    """The server's half of the viewer's handshake, from an upstream session already past
    ServerInit (see ``vncspare``): 3.7 or 3.8, security None. Returns what the viewer sent
    after its ClientInit, for the input gate."""
    buf = bytearray()

    async def read(size: int) -> bytes:
        while len(buf) < size:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", CLOSE_NORMAL))
            buf.extend(message.get("bytes") or (message.get("text") or "").encode())
            if len(buf) > ViewOnlyFilter.MAX_MESSAGE:
                raise RfbViolation("the viewer sent too much during the handshake")
        out = bytes(buf[:size])
        del buf[:size]
        return out

    await websocket.send_bytes(b"RFB 003.008\n")
    version = await read(12)
    if version[:11] not in (b"RFB 003.007", b"RFB 003.008"):
        raise RfbViolation(f"the relay speaks RFB 3.7 or 3.8, the viewer sent {version[:11]!r}")
    await websocket.send_bytes(b"\x01\x01")  # one security type: None
    if await read(1) != b"\x01":
        raise RfbViolation("the viewer chose a security type other than None")
    if version[:11] == b"RFB 003.008":  # 3.7 sends no SecurityResult after None
        await websocket.send_bytes(b"\0\0\0\0")
    await read(1)  # ClientInit: the upstream session is shared whatever the viewer asks
    await websocket.send_bytes(server_init)
    return bytes(buf)


async def _viewer(
    websocket: WebSocket, upstream: Upstream, view_filter: ViewOnlyFilter, answered: anyio.Event
) -> None:
    rest = await answer_handshake(websocket, upstream.server_init)
    answered.set()
    if data := view_filter.feed(rest):
        await upstream.send(data)
    await _browser_to_vnc(websocket, upstream, view_filter)


async def _upstream(websocket: WebSocket, upstream: Upstream, answered: anyio.Event) -> None:
    await answered.wait()  # what x11vnc sends (a clipboard change) follows the handshake
    await _vnc_to_browser(websocket, upstream)


async def relay(
    websocket: WebSocket,
    upstream: Upstream,
    *,
    may_drive: Callable[[], bool] = lambda: False,
    keep: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Answer the handshake, then pump bytes both ways until either side ends; returns the
    close code for the browser. ``keep`` runs beside (refilling the spare session)."""
    code = CLOSE_NORMAL
    answered = anyio.Event()
    async with upstream.stream, anyio.create_task_group() as tg:

        async def pump(job: Callable[..., Awaitable[None]], *args: Any) -> None:
            nonlocal code
            try:
                await job(websocket, upstream, *args)
            except RfbViolation as exc:
                log.warning("vnc relay: closing a viewer: %s", exc)
                code = CLOSE_POLICY
            except (WebSocketDisconnect, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            tg.cancel_scope.cancel()  # either side ending ends the other

        tg.start_soon(pump, _viewer, ViewOnlyFilter(may_drive, handshake_done=True), answered)
        tg.start_soon(pump, _upstream, answered)
        if keep is not None:
            tg.start_soon(keep)
    return code


async def serve_viewer(
    websocket: WebSocket,
    sandbox_id: str,
    resolve: VncResolver,
    *,
    view_only: bool,
    may_drive: DrivePolicy = lambda sandbox_id: True,
    spares: SparePool | None = None,
) -> None:
    """One viewer: resolving -> refused (4404) | open -> closed (1000, or 1008 for a viewer
    that sent what the relay cannot parse). ``spares`` hands out pre-opened sessions."""
    spares = spares or SparePool()
    live = spares.live_path(sandbox_id)  # a spare is open: x11vnc runs, no need to ask
    try:
        endpoint = f"unix:{live}" if live else await resolve(sandbox_id)
    except HivecellError as exc:
        log.info("vnc relay: %s unavailable: %s", sandbox_id, exc)
        await websocket.close(CLOSE_UNAVAILABLE, reason=str(exc)[:120])
        return
    await websocket.accept(subprotocol=SUBPROTOCOL)
    code = await _serve_accepted(websocket, sandbox_id, endpoint, spares, view_only, may_drive)
    log.debug("vnc relay: %s closed (code %d)", sandbox_id, code)
    # The browser may have closed first: Starlette refuses a second close with RuntimeError,
    # and a close to a peer already gone raises WebSocketDisconnect.
    with suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code)


async def _serve_accepted(
    websocket: WebSocket,
    sandbox_id: str,
    endpoint: str,
    spares: SparePool,
    view_only: bool,
    may_drive: DrivePolicy,
) -> int:
    kind, _, path = endpoint.partition(":")
    if kind != "unix":
        return CLOSE_UNAVAILABLE
    try:
        upstream = await spares.take(sandbox_id, path)  # host-only folder; no-follow too
    # IncompleteRead: x11vnc hung up mid-handshake (its desktop is closing).
    except (OSError, UpstreamError, TimeoutError, anyio.EndOfStream, anyio.IncompleteRead) as exc:
        log.info("vnc relay: %s: x11vnc unavailable: %s", sandbox_id, exc)
        return CLOSE_UNAVAILABLE
    allowed = (lambda: False) if view_only else (lambda: may_drive(sandbox_id))
    return await relay(
        websocket, upstream, may_drive=allowed, keep=lambda: spares.keep(sandbox_id, path)
    )


def provider_resolver(provider: SandboxProvider) -> VncResolver:
    """Resolve through the sandbox provider: start x11vnc in the guest, return its socket."""

    async def resolve(sandbox_id: str) -> str:
        info = await provider.info(sandbox_id)
        if info.vnc_endpoint is None:
            raise HivecellError(f"sandbox {sandbox_id} has no VNC endpoint", op="vnc")
        failure: HivecellError | None = None
        async with await provider.connect(sandbox_id) as guest:
            try:
                await guest.call("start_vnc", {})
            except HivecellError as exc:  # raised out here: the client's task group would
                failure = exc  # wrap it in an ExceptionGroup that serve_viewer cannot catch
        if failure is not None:
            raise failure
        return info.vnc_endpoint

    return resolve


def vnc_router(
    resolve: VncResolver,
    dependencies: Sequence[Depends] = (),
    may_drive: DrivePolicy = lambda sandbox_id: True,
    spares: SparePool | None = None,
) -> APIRouter:
    """The relay route; ``dependencies`` carry the server's auth, as on every route;
    ``may_drive`` says whether a sandbox takes input from interactive viewers right now;
    ``spares`` (one per app: its viewers share it) keeps sessions ready for new viewers."""
    router = APIRouter(dependencies=list(dependencies))
    pool = spares or SparePool()

    @router.websocket(VNC_PATH)
    async def vnc(websocket: WebSocket, sandbox_id: str, view_only: bool = False) -> None:
        await serve_viewer(
            websocket,
            sandbox_id,
            resolve,
            view_only=view_only,
            may_drive=may_drive,
            spares=pool,
        )

    return router
