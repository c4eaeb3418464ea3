"""Many byte streams over one: the channels a VM's host and guest share on one serial port.

A VM reaches its host through one virtio-serial port, held by the VM's supervisor for the
VM's whole life, yet the host needs many concurrent streams into the guest: several JSON-RPC
clients of the agent, VNC viewers. Each is a *channel* of a ``Mux`` on that port, and a
channel is an ``anyio.abc.ByteStream``, so ``Connection`` and the relays use it unchanged.

Wire format, the same both ways: frames of ``id (u32 BE) | type (u8) | length (u32 BE) |
payload``, the payload at most 64 KiB:

- OPEN (1): opens channel ``id``; the payload is its kind ("agent", "vnc": 1-32 characters
  of ``[A-Za-z0-9._-]``).
- DATA (2): 1 byte to 64 KiB of the channel's stream.
- CLOSE (3): empty; ends the channel both ways. There is no reply and no half-close: the id
  is free at each side as soon as it sent or received CLOSE.
- WINDOW (4): a u32 BE of bytes the receiver of this frame may send on top of its credit.
- RESET (5): an 8-byte nonce. A host made with ``resync=True`` starts with it and ignores
  everything until the guest echoes it; the guest, on a nonce it has not seen, first drops
  every channel (they belonged to an earlier host: the VM was restored from a saved state,
  mid-conversation with a host long gone), then echoes it. The host repeats it until
  echoed (a restored guest may have been mid-frame), so a guest echoes a repeat without
  dropping anything again.

Ids: the side made with ``initiator=True`` (the host) opens odd ids, the other side even ones
(never 0), so either may open without a handshake. DATA, CLOSE and WINDOW for an id that is
not open are dropped: they race with a CLOSE going the other way.

Flow control: a side may have at most ``window`` bytes of a channel unread at the other end;
reading gives credit back (WINDOW). Without it a channel whose reader stalls (a VNC viewer
on a slow network) would stop the read loop, and with it every other channel, the agent's
heartbeats first: the read loop never waits for a channel, and no channel is blocked by
another one's buffer (no head-of-line blocking).

The peer is untrusted (a guest may be hostile): a malformed frame (unknown type, a length
over its type's limit, a bad kind, OPEN of an open id or of the wrong parity, DATA beyond
the window, a WINDOW granting more than was sent) is a ``MuxProtocolError``: ``run`` closes
every channel and raises it, ending this mux only. What a peer can make a mux hold is
bounded: the frame being read (a length is checked before its payload is read), ``window``
bytes per channel and ``max_channels`` channels (an OPEN beyond them is answered with
CLOSE), and a bounded queue of frames to write.
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
from collections import deque

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream

from hivecell.errors import HivecellError

log = logging.getLogger("hivecell.mux")

OPEN, DATA, CLOSE, WINDOW, RESET = 1, 2, 3, 4, 5
HEADER = struct.Struct(">IBI")  # stream id, type, payload length
_GRANT = struct.Struct(">I")
MAX_PAYLOAD = 64 * 1024
MAX_KIND = 32
DEFAULT_WINDOW = 256 * 1024  # per channel and direction: max_channels x this is the bound
DEFAULT_MAX_CHANNELS = 256
OUTBOX_FRAMES = 16  # frames queued for the link before senders wait (~1 MiB)
FLUSH_BYTES = 256 * 1024  # queued frames joined into one write to the link
READ_CHUNK = 64 * 1024
_MAX_ID = 2**32 - 1
_KIND = re.compile(r"[A-Za-z0-9._-]{1,32}")
_LENGTHS = {
    OPEN: (1, MAX_KIND),
    DATA: (1, MAX_PAYLOAD),
    CLOSE: (0, 0),
    WINDOW: (4, 4),
    RESET: (8, 8),
}
RESET_REPEAT = (0.5, 5.0)  # first wait for the echo, and the longest (doubling between)
# How a link ends: the VM died, the port's other side closed, or someone closed the link.
_LINK_ENDS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class MuxProtocolError(HivecellError):
    """The peer sent a frame the mux protocol forbids; the mux and its channels are closed."""

    code = "mux_protocol_error"


def check_kind(kind: str) -> bytes:
    """A channel kind as sent in OPEN; ValueError if it could not be."""
    if not _KIND.fullmatch(kind):
        raise ValueError(f"channel kind must be 1-{MAX_KIND} of [A-Za-z0-9._-], not {kind!r}")
    return kind.encode("ascii")


def encode_frame(stream_id: int, frame_type: int, payload: bytes | memoryview = b"") -> bytes:
    return b"".join((HEADER.pack(stream_id, frame_type, len(payload)), payload))


def _violation(message: str, stream_id: int, frame_type: int, length: int) -> MuxProtocolError:
    context = {"stream": stream_id, "type": frame_type, "length": length}
    return MuxProtocolError(message, op="mux", context=context)


def _check_header(stream_id: int, frame_type: int, length: int) -> None:
    """Before the payload is read: a peer's declared length is never allocated unchecked."""
    if frame_type not in _LENGTHS:
        raise _violation(f"unknown frame type {frame_type}", stream_id, frame_type, length)
    low, high = _LENGTHS[frame_type]
    if not low <= length <= high:
        raise _violation(
            f"frame type {frame_type} with a {length}-byte payload (allowed: {low}-{high})",
            stream_id,
            frame_type,
            length,
        )


class _LinkReader:
    """Whole frames from the link; buffers at most one frame plus one read ahead."""

    def __init__(self, link: ByteStream) -> None:
        self._link = link
        self._buf = bytearray()

    async def frame(self) -> tuple[int, int, bytes] | None:
        """The next frame, or None once the link ended (a frame cut off is dropped)."""
        if not await self._fill(HEADER.size):
            self._note_cut()
            return None
        stream_id, frame_type, length = HEADER.unpack_from(self._buf)
        _check_header(stream_id, frame_type, length)
        end = HEADER.size + length
        if not await self._fill(end):
            self._note_cut()
            return None
        payload = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        return stream_id, frame_type, payload

    async def _fill(self, size: int) -> bool:
        while len(self._buf) < size:
            try:
                self._buf += await self._link.receive(READ_CHUNK)
            except _LINK_ENDS:
                return False
        return True

    def _note_cut(self) -> None:
        if self._buf:  # the peer died mid-write: nothing to deliver, nothing to blame
            log.info("mux link ended inside a frame (%d bytes of it arrived)", len(self._buf))


class MuxChannel(ByteStream):
    """One stream of a ``Mux``. ``receive`` raises ``EndOfStream`` once the peer closed it and
    its bytes are read, ``BrokenResourceError`` once the mux ended; ``send`` after the peer's
    CLOSE or the mux's end raises ``BrokenResourceError``, after ``aclose`` ``ClosedResourceError``.
    """

    def __init__(self, mux: Mux, stream_id: int, kind: str, window: int) -> None:
        self.id = stream_id
        self.kind = kind
        self._mux = mux
        self._buffer: deque[bytes] = deque()
        self._recv_budget = window  # bytes the peer may still send before our next WINDOW
        self._ungranted = 0  # bytes read out of the buffer and not yet granted back
        self._grant_queued = False
        self._in_backlog = False  # opened by the peer, not accepted yet
        self._credit = window  # bytes we may still send
        self._closed = False  # closed here (aclose)
        self._end: type[Exception] | None = None  # EndOfStream (peer's CLOSE) or broken mux
        self._changed = anyio.Event()
        self._send_lock = anyio.Lock()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read (never more than the window)."""
        return sum(map(len, self._buffer))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        await anyio.lowlevel.checkpoint()
        while not self._buffer:
            self._check_open()
            if self._end is not None:
                raise self._end
            await self._changed.wait()
        self._check_open()
        head = self._buffer[0]
        if len(head) <= max_bytes:
            self._buffer.popleft()
        else:
            self._buffer[0] = head[max_bytes:]
            head = head[:max_bytes]
        self._mux._consumed(self, len(head))
        return head

    async def send(self, item: bytes) -> None:
        """Queues ``item`` as DATA frames, waiting for the peer's credit and room in the
        link's queue. Cancelled, a prefix of ``item`` may have been queued (as on a socket)."""
        self._check_sendable()
        async with self._send_lock:
            view = memoryview(item)
            while view:
                await self._wait_credit()
                await self._mux._wait_room(self)
                size = min(len(view), self._credit, MAX_PAYLOAD)
                # nothing awaits between _wait_room's last check and this append
                self._mux._push(encode_frame(self.id, DATA, view[:size]))
                self._credit -= size
                view = view[size:]

    async def send_eof(self) -> None:
        """The mux has no half-close; say so rather than drop the peer's answer silently."""
        raise NotImplementedError("mux channels have no half-close; aclose() ends both ways")

    async def aclose(self) -> None:
        """Close at once (never waits: a stalled link must not hold a shielded close)."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._mux._closed_here(self)
        self._notify()

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    def _check_sendable(self) -> None:
        self._check_open()
        if self._end is not None:
            raise anyio.BrokenResourceError(f"mux channel {self.id} ({self.kind}) has ended")

    async def _wait_credit(self) -> None:
        while True:
            self._check_sendable()
            if self._credit > 0:
                return
            await self._changed.wait()

    def _finish(self, end: type[Exception]) -> None:
        if self._end is None:
            self._end = end
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class Mux:
    """A multiplexer over ``link``. Run ``run()`` in a task group for the mux's life; it
    returns when the link ends and raises ``MuxProtocolError`` for a bad frame, having
    closed every channel either way. The caller keeps ownership of ``link``.

    ``initiator``: this side opens odd ids (the host), else even ones (the guest).
    ``accept``: whether the peer may open channels (``accept()`` hands them out); if not,
    every OPEN from it is answered with CLOSE.
    """

    def __init__(
        self,
        link: ByteStream,
        *,
        initiator: bool,
        accept: bool = True,
        window: int = DEFAULT_WINDOW,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        resync: bool = False,
    ) -> None:
        if not 1 <= window <= _MAX_ID:
            raise ValueError(f"window must be 1 to {_MAX_ID} bytes")
        if resync and not initiator:
            raise ValueError("only the host (initiator=True) resyncs")
        self._link = link
        self._initiator = initiator
        self._accepting = accept
        self._window = window
        self._max_channels = max_channels
        self._channels: dict[int, MuxChannel] = {}
        self._backlog: deque[MuxChannel] = deque()  # opened by the peer, not yet accepted
        self._backlog_closed = 0  # of them, closed by the peer since: counted as open ones
        self._outbox: deque[bytes | MuxChannel] = deque()  # a channel: its WINDOW, made late
        self._changed = anyio.Event()  # outbox or backlog changed, or the mux ended
        self._next_id = self._first_id()
        self._started = False
        self._ended = False
        self._nonce = secrets.token_bytes(8) if resync else b""  # ours, until echoed
        self._synced = anyio.Event()
        if not resync:
            self._synced.set()
        self._seen_reset = b""  # the last host nonce (guest side)
        self._resync_wanted = anyio.Event()

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("Mux.run() runs once per mux")
        self._started = True
        error: MuxProtocolError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write_loop, tg.cancel_scope)
                if self._nonce:
                    tg.start_soon(self._resync)
                try:
                    await self._read_loop()
                except MuxProtocolError as exc:  # raised below, not wrapped in a group
                    error = exc
                tg.cancel_scope.cancel()
        finally:
            self._shutdown()
        if error is not None:
            raise error

    async def open(self, kind: str) -> MuxChannel:
        """A new channel of ``kind``. Over ``max_channels`` it is refused as the peer would
        refuse it: it reads end of stream at once."""
        encoded = check_kind(kind)
        await self._synced.wait()
        await self._wait_room(None)
        if self._held() >= self._max_channels:
            log.warning("refusing a %s channel: %d are open", kind, len(self._channels))
            refused = MuxChannel(self, 0, kind, self._window)
            refused._finish(anyio.EndOfStream)
            return refused
        stream_id = self._allocate_id()
        channel = self._channels[stream_id] = MuxChannel(self, stream_id, kind, self._window)
        self._push(encode_frame(stream_id, OPEN, encoded))
        return channel

    async def accept(self) -> tuple[str, MuxChannel]:
        """The next channel the peer opened, with its kind; ``BrokenResourceError`` once the
        mux has ended."""
        if not self._accepting:
            raise RuntimeError("this mux was made with accept=False")
        while not self._backlog:
            if self._ended:
                raise anyio.BrokenResourceError("the mux has ended")
            await self._changed.wait()
        channel = self._backlog.popleft()
        channel._in_backlog = False
        if channel._end is not None:
            self._backlog_closed -= 1
        return channel.kind, channel

    # --- reading --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reader = _LinkReader(self._link)
        while (frame := await reader.frame()) is not None:
            stream_id, frame_type, payload = frame
            if frame_type == RESET:
                await self._on_reset(payload)
            elif not self._synced.is_set():
                continue  # an earlier host's conversation, still in the pipe
            elif frame_type == OPEN:
                await self._on_open(stream_id, payload)
            elif frame_type == DATA:
                self._on_data(stream_id, payload)
            elif frame_type == CLOSE:
                self._on_close(stream_id)
            else:
                self._on_window(stream_id, _GRANT.unpack(payload)[0])

    async def _on_open(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 != (0 if self._initiator else 1):
            raise _violation(
                f"OPEN of id {stream_id}, not one of the peer's", stream_id, OPEN, len(payload)
            )
        if stream_id in self._channels:
            raise _violation(f"OPEN of id {stream_id}, already open", stream_id, OPEN, len(payload))
        kind = payload.decode("ascii", "replace")
        if not _KIND.fullmatch(kind):
            raise _violation(f"OPEN with a bad kind {payload!r}", stream_id, OPEN, len(payload))
        if not self._accepting or self._held() >= self._max_channels:
            await self._wait_room(None)  # the peer floods us and reads nothing: wait for it
            self._push(encode_frame(stream_id, CLOSE))
            return
        channel = self._channels[stream_id] = MuxChannel(self, stream_id, kind, self._window)
        channel._in_backlog = True
        self._backlog.append(channel)
        self._wake()

    async def _on_reset(self, nonce: bytes) -> None:
        if self._nonce:  # the host: our echo, or a stale one
            if nonce == self._nonce and not self._synced.is_set():
                self._synced.set()
            return
        if nonce != self._seen_reset:
            self._seen_reset = nonce
            self._drop_channels()
        await self._wait_room(None)
        self._push(encode_frame(0, RESET, nonce))

    def resync(self) -> None:
        """The host, when the guest started over (it rebooted): every channel ends (their
        clients reconnect) and nothing is read until the new guest echoes a new nonce."""
        if not self._nonce:
            raise RuntimeError("only a mux made with resync=True resyncs")
        self._nonce = secrets.token_bytes(8)
        self._synced = anyio.Event()
        self._drop_channels()
        self._resync_wanted.set()

    async def _resync(self) -> None:
        while True:
            delay, longest = RESET_REPEAT
            while not self._synced.is_set():
                self._push(encode_frame(0, RESET, self._nonce))
                synced = self._synced
                with anyio.move_on_after(delay):
                    await synced.wait()
                delay = min(delay * 2, longest)
            await self._resync_wanted.wait()
            self._resync_wanted = anyio.Event()

    def _on_data(self, stream_id: int, payload: bytes) -> None:
        channel = self._channels.get(stream_id)
        if channel is None:
            return
        if len(payload) > channel._recv_budget:
            raise _violation(
                f"DATA of {len(payload)} bytes on id {stream_id} overruns its window "
                f"({channel._recv_budget} bytes left)",
                stream_id,
                DATA,
                len(payload),
            )
        channel._recv_budget -= len(payload)
        channel._buffer.append(payload)
        channel._notify()

    def _on_close(self, stream_id: int) -> None:
        channel = self._channels.pop(stream_id, None)
        if channel is None:
            return
        if channel._in_backlog:  # still handed out, with its data; held until then
            self._backlog_closed += 1
        channel._finish(anyio.EndOfStream)

    def _on_window(self, stream_id: int, grant: int) -> None:
        channel = self._channels.get(stream_id)
        if channel is None:
            return
        if grant == 0 or channel._credit + grant > self._window:
            raise _violation(
                f"WINDOW of {grant} on id {stream_id}: more than was sent to it",
                stream_id,
                WINDOW,
                _GRANT.size,
            )
        channel._credit += grant
        channel._notify()

    # --- writing --------------------------------------------------------------------------

    async def _wait_room(self, channel: MuxChannel | None) -> None:
        """Until the outbox has room. The caller appends without awaiting again, so what
        was checked here still holds."""
        while True:
            if channel is not None:
                channel._check_sendable()
            if self._ended:
                raise anyio.BrokenResourceError("the mux has ended")
            if len(self._outbox) < OUTBOX_FRAMES:
                return
            await self._changed.wait()

    def _push(self, item: bytes | MuxChannel) -> None:
        """Queue without waiting: only for frames whose number is bounded otherwise (CLOSE:
        one per channel; WINDOW: one queued per channel) or after ``_wait_room``."""
        self._outbox.append(item)
        self._wake()

    async def _write_loop(self, scope: anyio.CancelScope) -> None:
        """The link's only writer: frames never interleave, and a cancelled ``send`` on a
        channel can never cut a frame short on the link."""
        try:
            while True:
                while not self._outbox:
                    await self._changed.wait()
                batch = self._take_batch()
                if batch:
                    await self._link.send(batch)
        except _LINK_ENDS as exc:
            log.info("mux link write failed: %r", exc)
        scope.cancel()  # the read loop goes with it

    def _take_batch(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while self._outbox and size < FLUSH_BYTES:
            item = self._outbox.popleft()
            frame = self._grant_frame(item) if isinstance(item, MuxChannel) else item
            parts.append(frame)
            size += len(frame)
        self._wake()  # room for waiting senders
        return b"".join(parts)

    def _consumed(self, channel: MuxChannel, size: int) -> None:
        """Bytes read from ``channel``: give credit back once half the window is read, so
        WINDOW frames stay few and a sender never waits for a reader that has read all."""
        channel._ungranted += size
        if channel._grant_queued or channel._ungranted < max(1, self._window // 2):
            return
        if self._channels.get(channel.id) is channel and not self._ended:
            channel._grant_queued = True
            self._push(channel)

    def _grant_frame(self, channel: MuxChannel) -> bytes:
        # made when written, so grants queued meanwhile are one frame
        channel._grant_queued = False
        if self._channels.get(channel.id) is not channel:
            return b""  # closed meanwhile: the peer would drop it
        grant, channel._ungranted = channel._ungranted, 0
        channel._recv_budget += grant  # the peer can use it only once it has read it
        return encode_frame(channel.id, WINDOW, _GRANT.pack(grant))

    # --- lifecycle ------------------------------------------------------------------------

    def _closed_here(self, channel: MuxChannel) -> None:
        if self._channels.get(channel.id) is channel:
            del self._channels[channel.id]
            if not self._ended:
                self._push(encode_frame(channel.id, CLOSE))

    def _shutdown(self) -> None:
        self._ended = True
        self._drop_channels()
        self._outbox.clear()
        self._wake()

    def _drop_channels(self) -> None:
        for channel in [*self._channels.values(), *self._backlog]:
            channel._finish(anyio.BrokenResourceError)
        self._channels.clear()
        self._backlog.clear()
        self._backlog_closed = 0

    def _held(self) -> int:
        """Channels counted against ``max_channels``: the open ones and those the peer
        opened and closed before they were accepted (else OPEN+CLOSE floods grow the backlog).
        """
        return len(self._channels) + self._backlog_closed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _first_id(self) -> int:
        return 1 if self._initiator else 2

    def _allocate_id(self) -> int:
        # ids are not reused until the counter wraps, so a late frame for a closed id is
        # dropped rather than landing in a new channel
        while True:
            stream_id = self._next_id
            following = stream_id + 2
            self._next_id = following if following <= _MAX_ID else self._first_id()
            if stream_id not in self._channels:
                return stream_id
