"""The channel multiplexer on real unix sockets: two muxes, or a mux and a hand-made peer.

The hand-made peer (``RawPeer``) writes frames byte by byte as a hostile guest would, and
reads what the mux writes to check the wire itself (frame sizes, credit, refusals).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from hivecell.protocol.mux import (
    CLOSE,
    DATA,
    HEADER,
    MAX_PAYLOAD,
    OPEN,
    RESET,
    WINDOW,
    Mux,
    MuxChannel,
    MuxProtocolError,
    encode_frame,
)
from hivecell.protocol.unixstream import UnixStream

pytestmark = pytest.mark.anyio


async def _stream(sock: socket.socket) -> UnixStream:
    sock.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    return UnixStream(sock, reader, writer)


@asynccontextmanager
async def link_pair() -> AsyncIterator[tuple[UnixStream, UnixStream]]:
    left, right = socket.socketpair()
    a, b = await _stream(left), await _stream(right)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def header(stream_id: int, frame_type: int, length: int) -> bytes:
    return HEADER.pack(stream_id, frame_type, length)


def grant(stream_id: int, size: int) -> bytes:
    return encode_frame(stream_id, WINDOW, struct.pack(">I", size))


class RawPeer:
    """The far end of a link, speaking frames by hand."""

    def __init__(self, stream: UnixStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def send(self, *frames: bytes) -> None:
        await self.stream.send(b"".join(frames))

    async def frame(self) -> tuple[int, int, bytes]:
        head = await self._exactly(HEADER.size)
        stream_id, frame_type, length = HEADER.unpack(head)
        return stream_id, frame_type, await self._exactly(length)

    async def _exactly(self, size: int) -> bytes:
        with anyio.fail_after(10):
            while len(self._buf) < size:
                self._buf += await self.stream.receive()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a state no event tells about (how much a mux has buffered)."""
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await anyio.sleep(0.001)


async def read_exactly(channel: MuxChannel, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await channel.receive()
    return bytes(data)


@asynccontextmanager
async def muxes(**options: Any) -> AsyncIterator[tuple[Mux, Mux]]:
    """A host mux and a guest mux, running, joined by a socket pair."""
    async with link_pair() as (host_link, guest_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True, **options)
        guest = Mux(guest_link, initiator=False, **options)
        tg.start_soon(host.run)
        tg.start_soon(guest.run)
        with anyio.fail_after(30):
            yield host, guest
        tg.cancel_scope.cancel()


@asynccontextmanager
async def guest_facing_raw_host(**options: Any) -> AsyncIterator[tuple[Mux, RawPeer]]:
    """A guest mux whose host is a ``RawPeer`` (the host opens odd ids)."""
    async with link_pair() as (raw_link, guest_link), anyio.create_task_group() as tg:
        guest = Mux(guest_link, initiator=False, **options)
        tg.start_soon(guest.run)
        with anyio.fail_after(30):
            yield guest, RawPeer(raw_link)
        tg.cancel_scope.cancel()


# --- channels ------------------------------------------------------------------------------


async def test_channels_carry_bytes_both_ways() -> None:
    async with muxes() as (host, guest):
        channel = await host.open("agent")
        await channel.send(b"hello")
        kind, accepted = await guest.accept()
        assert kind == "agent" and accepted.kind == "agent"
        assert await accepted.receive() == b"hello"
        await accepted.send(b"world")
        assert await channel.receive() == b"world"


async def test_receive_hands_out_at_most_max_bytes() -> None:
    async with muxes() as (host, guest):
        channel = await host.open("agent")
        await channel.send(b"abcdef")
        _, accepted = await guest.accept()
        assert await accepted.receive(4) == b"abcd"
        assert await accepted.receive(4) == b"ef"


async def test_a_large_send_goes_out_in_frames_of_at_most_64_kib() -> None:
    payload = random.Random(1).randbytes(200_000)
    async with link_pair() as (host_link, raw_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True)
        tg.start_soon(host.run)
        raw = RawPeer(raw_link)
        channel = await host.open("vnc")
        await channel.send(payload)
        assert await raw.frame() == (1, OPEN, b"vnc")
        received = b""
        while len(received) < len(payload):
            stream_id, frame_type, data = await raw.frame()
            assert (stream_id, frame_type) == (1, DATA) and 0 < len(data) <= MAX_PAYLOAD
            received += data
        assert received == payload
        tg.cancel_scope.cancel()


async def test_many_channels_keep_each_ones_byte_order() -> None:
    """40 channels at once, each carrying more than its window both ways in odd-sized
    pieces: every byte arrives once, in order, on its own channel."""
    size = 300_000

    async def echo(channel: MuxChannel) -> None:
        async with channel:
            left = size
            while left:
                data = await channel.receive()
                await channel.send(data)
                left -= len(data)

    async def client(host: Mux, seed: int) -> None:
        payload = random.Random(seed).randbytes(size)
        channel = await host.open(f"c{seed}")
        async with channel, anyio.create_task_group() as tg:

            async def write() -> None:
                rng = random.Random(seed + 1000)
                view = memoryview(payload)
                while view:
                    piece = rng.randint(1, 100_000)
                    await channel.send(bytes(view[:piece]))
                    view = view[piece:]

            tg.start_soon(write)
            assert await read_exactly(channel, size) == payload
            results.append(seed)

    results: list[int] = []
    async with muxes() as (host, guest), anyio.create_task_group() as tg:

        async def serve() -> None:
            async with anyio.create_task_group() as echoes:
                for _ in range(40):
                    _, channel = await guest.accept()
                    echoes.start_soon(echo, channel)

        tg.start_soon(serve)
        async with anyio.create_task_group() as clients:
            for seed in range(40):
                clients.start_soon(client, host, seed)
    assert sorted(results) == list(range(40))


async def test_closing_ends_the_channel_both_ways() -> None:
    async with muxes() as (host, guest):
        channel = await host.open("agent")
        await channel.send(b"last words")
        await channel.aclose()
        _, accepted = await guest.accept()
        assert await accepted.receive() == b"last words"  # bytes sent before CLOSE arrive
        with pytest.raises(anyio.EndOfStream):
            await accepted.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await accepted.send(b"too late")
        await accepted.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await channel.send(b"after close")
        with pytest.raises(anyio.ClosedResourceError):
            await channel.receive()
        await channel.aclose()  # idempotent
        assert host.open_channels == 0


async def test_there_is_no_half_close() -> None:
    async with muxes() as (host, _):
        channel = await host.open("agent")
        with pytest.raises(NotImplementedError):
            await channel.send_eof()


async def test_a_channel_closed_while_data_is_in_flight() -> None:
    """The guest closes a channel the host is pouring data into: the host's send fails
    (BrokenResource) once the CLOSE arrives, the late DATA is dropped, the mux goes on."""
    async with muxes() as (host, guest):
        busy = await host.open("vnc")
        other = await host.open("agent")
        _, busy_guest = await guest.accept()
        _, other_guest = await guest.accept()
        async with anyio.create_task_group() as tg:

            async def pour() -> None:
                with pytest.raises(anyio.BrokenResourceError):
                    while True:
                        await busy.send(b"x" * 100_000)

            tg.start_soon(pour)
            await busy_guest.receive()  # the data is flowing
            await busy_guest.aclose()
        # pour() saw the CLOSE: both sides dropped the channel, the other one goes on
        assert guest.open_channels == 1 and host.open_channels == 1
        await other.send(b"still here")
        assert await other_guest.receive() == b"still here"


async def test_opening_over_the_limit_is_refused_like_the_peer_would() -> None:
    async with muxes(max_channels=2) as (host, _):
        await host.open("agent")
        await host.open("agent")
        refused = await host.open("agent")
        with pytest.raises(anyio.EndOfStream):
            await refused.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await refused.send(b"x")
        assert host.open_channels == 2


async def test_ending_the_mux_ends_every_channel() -> None:
    async with link_pair() as (host_link, guest_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True)
        guest = Mux(guest_link, initiator=False)
        host_scope = anyio.CancelScope()

        async def run_host() -> None:
            with host_scope:
                await host.run()

        tg.start_soon(run_host)
        guest_done = anyio.Event()

        async def run_guest() -> None:
            await guest.run()  # returns: the link ended, it did not break the protocol
            guest_done.set()

        tg.start_soon(run_guest)
        channels = [await host.open("agent") for _ in range(3)]
        accepted = [(await guest.accept())[1] for _ in range(3)]
        host_scope.cancel()
        for channel in channels:
            with pytest.raises(anyio.BrokenResourceError):
                await channel.receive()
            with pytest.raises(anyio.BrokenResourceError):
                await channel.send(b"x")
        with pytest.raises(anyio.BrokenResourceError):
            await host.open("agent")
        await host_link.aclose()  # the VM's port goes away
        with anyio.fail_after(10):
            await guest_done.wait()
        for channel in accepted:
            with pytest.raises(anyio.BrokenResourceError):
                await channel.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await guest.accept()


async def test_kinds_are_checked_before_anything_is_sent() -> None:
    async with muxes() as (host, _):
        for kind in ("", "x" * 33, "two words", "café", "a\n"):
            with pytest.raises(ValueError, match="channel kind"):
                await host.open(kind)


# --- flow control --------------------------------------------------------------------------


async def test_a_sender_never_exceeds_the_credit_it_was_given() -> None:
    window = 4096
    async with link_pair() as (host_link, raw_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True, window=window)
        tg.start_soon(host.run)
        raw = RawPeer(raw_link)
        channel = await host.open("vnc")
        tg.start_soon(channel.send, b"y" * 1_000_000)
        assert (await raw.frame())[1] == OPEN
        sent = 0
        while sent < window:
            _, frame_type, data = await raw.frame()
            assert frame_type == DATA
            sent += len(data)
        assert sent == window  # and then nothing until credit comes back:
        for size in (1, 2, 3000):
            await raw.send(grant(1, size))
            assert await raw.frame() == (1, DATA, b"y" * size)
        tg.cancel_scope.cancel()


async def test_a_channel_nobody_reads_holds_its_window_and_blocks_no_other() -> None:
    """No head-of-line blocking, and bounded memory: a guest channel never read holds
    exactly one window; the host's sender waits; another channel still talks."""
    window = 64 * 1024
    async with muxes(window=window) as (host, guest), anyio.create_task_group() as tg:
        stalled = await host.open("vnc")
        lively = await host.open("agent")
        _, stalled_guest = await guest.accept()
        _, lively_guest = await guest.accept()
        send_done = anyio.Event()

        async def flood() -> None:
            await stalled.send(b"z" * 4_000_000)
            send_done.set()

        tg.start_soon(flood)
        await wait_until(lambda: stalled_guest.buffered == window)
        for i in range(100):
            await lively.send(b"ping %d" % i)
            assert await lively_guest.receive() == b"ping %d" % i
            await lively_guest.send(b"pong %d" % i)
            assert await lively.receive() == b"pong %d" % i
        assert stalled_guest.buffered == window and not send_done.is_set()
        assert await read_exactly(stalled_guest, 4_000_000) == b"z" * 4_000_000
        with anyio.fail_after(10):
            await send_done.wait()


async def test_data_beyond_the_window_is_a_protocol_error() -> None:
    async with link_pair() as (raw_link, guest_link):
        guest = Mux(guest_link, initiator=False, window=1000)
        raw = RawPeer(raw_link)
        await raw.send(
            encode_frame(1, OPEN, b"agent"),
            encode_frame(1, DATA, b"a" * 1000),
            encode_frame(1, DATA, b"b"),
        )
        with anyio.fail_after(10), pytest.raises(MuxProtocolError, match="overruns its window"):
            await guest.run()
        assert await _accepted_before_the_end(guest) == ("", None)  # gone with the mux


# --- a hostile peer -------------------------------------------------------------------------

MALFORMED = {
    "type 0": header(1, 0, 0),
    "type 5": header(1, 5, 0),
    "type 255": header(1, 255, 3) + b"abc",
    "DATA over 64 KiB": header(1, DATA, MAX_PAYLOAD + 1),
    "empty DATA": header(1, DATA, 0),
    "empty kind": header(1, OPEN, 0),
    "kind over 32 bytes": encode_frame(1, OPEN, b"k" * 33),
    "kind with a space": encode_frame(1, OPEN, b"two words"),
    "kind not ASCII": encode_frame(1, OPEN, "café".encode()),
    "kind with a newline": encode_frame(1, OPEN, b"agent\n"),
    "kind with a NUL": encode_frame(1, OPEN, b"agent\x00"),
    "OPEN of an open id": encode_frame(1, OPEN, b"agent") * 2,
    "OPEN of an id of the other side": encode_frame(2, OPEN, b"agent"),
    "OPEN of id 0": encode_frame(0, OPEN, b"agent"),
    "CLOSE with a payload": encode_frame(1, OPEN, b"agent") + encode_frame(1, CLOSE, b"x"),
    "WINDOW of 3 bytes": encode_frame(1, OPEN, b"agent") + encode_frame(1, WINDOW, b"abc"),
    "WINDOW of 0": encode_frame(1, OPEN, b"agent") + grant(1, 0),
    "WINDOW beyond what was sent": encode_frame(1, OPEN, b"agent") + grant(1, 1),
}


@pytest.mark.parametrize("frames", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_frame_ends_the_mux_and_only_it(frames: bytes) -> None:
    async with link_pair() as (raw_link, guest_link), anyio.create_task_group() as tg:
        guest = Mux(guest_link, initiator=False)
        raw = RawPeer(raw_link)
        await raw.send(encode_frame(7, OPEN, b"agent"), encode_frame(7, DATA, b"before"))
        async with muxes() as (host2, guest2):  # another mux must not notice anything
            await raw.send(frames)
            with anyio.fail_after(10), pytest.raises(MuxProtocolError) as caught:
                await guest.run()
            assert caught.value.code == "mux_protocol_error" and caught.value.op == "mux"
            assert await _accepted_before_the_end(guest) == ("", None)  # gone with the mux
            with pytest.raises(anyio.BrokenResourceError):
                await guest.open("agent")
            channel = await host2.open("agent")
            await channel.send(b"unaffected")
            assert await (await guest2.accept())[1].receive() == b"unaffected"
        tg.cancel_scope.cancel()


async def _accepted_before_the_end(mux: Mux) -> tuple[str, MuxChannel | None]:
    try:
        return await mux.accept()
    except anyio.BrokenResourceError:
        return "", None


async def test_a_channel_open_when_the_peer_breaks_the_protocol_is_broken() -> None:
    async with link_pair() as (raw_link, guest_link), anyio.create_task_group() as tg:
        guest = Mux(guest_link, initiator=False)
        raw = RawPeer(raw_link)
        failed = anyio.Event()

        async def run() -> None:
            with pytest.raises(MuxProtocolError):
                await guest.run()
            failed.set()

        tg.start_soon(run)
        await raw.send(encode_frame(1, OPEN, b"agent"), encode_frame(1, DATA, b"kept"))
        _, channel = await guest.accept()
        await raw.send(header(1, 9, 0))
        assert await channel.receive() == b"kept"  # what arrived is still read
        with pytest.raises(anyio.BrokenResourceError):
            await channel.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await channel.send(b"x")
        with anyio.fail_after(10):
            await failed.wait()


async def test_a_huge_declared_length_is_refused_without_reading_or_allocating_it() -> None:
    """Only the header is sent and the link stays open: a mux that waited for the payload
    would hang; one that allocated it would take 4 GiB."""
    async with link_pair() as (raw_link, guest_link):
        guest = Mux(guest_link, initiator=False)
        raw = RawPeer(raw_link)
        await raw.send(encode_frame(1, OPEN, b"agent"), header(1, DATA, 0xFFFFFFFF))
        tracemalloc.start()
        try:
            with anyio.fail_after(10), pytest.raises(MuxProtocolError, match="4294967295"):
                await guest.run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20


async def test_an_open_flood_is_answered_with_close_beyond_the_limit() -> None:
    async with guest_facing_raw_host(max_channels=8) as (guest, raw):
        ids = range(1, 401, 2)  # 200 OPENs, none accepted yet
        await raw.send(*(encode_frame(i, OPEN, b"agent") for i in ids))
        refused = [await raw.frame() for _ in ids[8:]]
        assert refused == [(i, CLOSE, b"") for i in ids[8:]]
        assert guest.open_channels == 8
        for i in ids[:8]:
            assert (await guest.accept())[1].id == i
        # the refused ids are free for the peer again; accepted channels still count
        await raw.send(encode_frame(17, OPEN, b"vnc"))
        assert await raw.frame() == (17, CLOSE, b"")


async def test_channels_opened_and_closed_before_accept_still_count() -> None:
    """The peer's bytes before its CLOSE are handed out with the channel, so an unaccepted
    closed channel is held, and counted: OPEN+CLOSE floods cannot grow the backlog."""
    async with guest_facing_raw_host(max_channels=4) as (guest, raw):
        ids = range(1, 21, 2)
        await raw.send(
            *(encode_frame(i, OPEN, b"a") + encode_frame(i, DATA, b"%d" % i) for i in ids),
            *(encode_frame(i, CLOSE) for i in ids),
        )
        assert [await raw.frame() for _ in ids[4:]] == [(i, CLOSE, b"") for i in ids[4:]]
        for i in ids[:4]:
            _, channel = await guest.accept()
            assert (channel.id, await channel.receive()) == (i, b"%d" % i)
            with pytest.raises(anyio.EndOfStream):
                await channel.receive()
        await raw.send(encode_frame(21, OPEN, b"after"))  # accepting freed the slots
        assert (await guest.accept())[0] == "after"


async def test_frames_for_ids_not_open_are_dropped() -> None:
    async with guest_facing_raw_host() as (guest, raw):
        await raw.send(
            encode_frame(7, DATA, b"nobody"),
            encode_frame(9, CLOSE),
            grant(11, 5),
            encode_frame(2, DATA, b"an id of the guest's"),
            encode_frame(1, OPEN, b"agent"),
            encode_frame(1, DATA, b"hi"),
        )
        _, channel = await guest.accept()
        assert await channel.receive() == b"hi"
        await channel.aclose()
        await raw.send(encode_frame(1, DATA, b"late"), encode_frame(1, CLOSE))  # raced a CLOSE
        assert await raw.frame() == (1, CLOSE, b"")
        await raw.send(encode_frame(3, OPEN, b"vnc"))
        assert (await guest.accept())[0] == "vnc"


# --- resync after a restore ----------------------------------------------------------------


async def test_a_restored_guest_drops_the_channels_of_its_earlier_host() -> None:
    async with guest_facing_raw_host() as (guest, raw):
        await raw.send(encode_frame(1, OPEN, b"agent"), encode_frame(1, DATA, b"before"))
        _, old = await guest.accept()
        assert await old.receive() == b"before"
        # the VM was saved here and restored under a new host, which opens id 1 again
        await raw.send(encode_frame(0, RESET, b"12345678"))
        assert await raw.frame() == (0, RESET, b"12345678")
        with pytest.raises(anyio.BrokenResourceError):
            await old.receive()
        await raw.send(encode_frame(1, OPEN, b"agent"), encode_frame(1, DATA, b"after"))
        _, new = await guest.accept()
        assert await new.receive() == b"after"
        # the host repeated its RESET before the echo arrived: echoed, nothing dropped
        await raw.send(encode_frame(0, RESET, b"12345678"), encode_frame(1, DATA, b"still"))
        assert await raw.frame() == (0, RESET, b"12345678")
        assert await new.receive() == b"still"
        await old.aclose()  # a dropped channel's close sends nothing
        await new.send(b"reply")
        assert await raw.frame() == (1, DATA, b"reply")


async def test_a_resyncing_host_ignores_the_guest_until_its_nonce_comes_back() -> None:
    async with link_pair() as (host_link, raw_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True, resync=True)
        tg.start_soon(host.run)
        raw = RawPeer(raw_link)
        opened: list[MuxChannel] = []

        async def open_one() -> None:
            opened.append(await host.open("agent"))

        tg.start_soon(open_one)
        _, frame_type, nonce = await raw.frame()
        assert (frame_type, len(nonce)) == (RESET, 8)
        # what a restored guest still had to say to its earlier host, and a wrong echo
        await raw.send(
            encode_frame(1, DATA, b"stale"),
            encode_frame(2, OPEN, b"agent"),
            header(1, WINDOW, 4) + struct.pack(">I", 999_999),
            encode_frame(0, RESET, b"wrongwro"),
        )
        assert await raw.frame() == (0, RESET, nonce)  # not echoed: the host says it again
        assert not opened
        await raw.send(encode_frame(0, RESET, nonce), encode_frame(0, RESET, nonce))
        assert await raw.frame() == (1, OPEN, b"agent")
        await raw.send(encode_frame(1, DATA, b"fresh"))
        assert await opened[0].receive() == b"fresh"
        tg.cancel_scope.cancel()


async def test_a_host_resyncs_with_a_guest_that_started_over() -> None:
    async with link_pair() as (host_link, raw_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True, resync=True)
        tg.start_soon(host.run)
        raw = RawPeer(raw_link)
        _, _, first = await raw.frame()
        await raw.send(encode_frame(0, RESET, first))
        before = await host.open("agent")
        assert await raw.frame() == (1, OPEN, b"agent")
        host.resync()  # the guest rebooted: its new agent knows no channel of ours
        with pytest.raises(anyio.BrokenResourceError):
            await before.receive()
        _, frame_type, second = await raw.frame()
        assert frame_type == RESET and second != first
        await raw.send(encode_frame(1, DATA, b"old guest"), encode_frame(0, RESET, second))
        after = await host.open("agent")
        stream_id, frame_type, _ = await raw.frame()
        assert (frame_type, stream_id) == (OPEN, after.id) and after.id != 1
        await raw.send(encode_frame(after.id, DATA, b"new guest"))
        assert await after.receive() == b"new guest"
        tg.cancel_scope.cancel()
    with pytest.raises(RuntimeError):
        Mux(host_link, initiator=True).resync()


async def test_resyncing_muxes_carry_channels() -> None:
    async with link_pair() as (host_link, guest_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True, resync=True)
        guest = Mux(guest_link, initiator=False)
        tg.start_soon(host.run)
        tg.start_soon(guest.run)
        with anyio.fail_after(30):
            channel = await host.open("agent")
            await channel.send(b"ping")
            _, accepted = await guest.accept()
            assert await accepted.receive() == b"ping"
        tg.cancel_scope.cancel()
    with pytest.raises(ValueError, match="host"):
        Mux(guest_link, initiator=False, resync=True)


async def test_a_mux_that_does_not_accept_answers_opens_with_close() -> None:
    async with link_pair() as (host_link, raw_link), anyio.create_task_group() as tg:
        host = Mux(host_link, initiator=True, accept=False)
        tg.start_soon(host.run)
        raw = RawPeer(raw_link)
        await raw.send(encode_frame(2, OPEN, b"agent"))
        assert await raw.frame() == (2, CLOSE, b"")
        assert host.open_channels == 0
        with pytest.raises(RuntimeError):
            await host.accept()
        tg.cancel_scope.cancel()


CUTS = {
    "inside a header": header(1, DATA, 10)[:5],
    "inside a payload": header(1, DATA, 10) + b"12345",
    "after a whole frame": b"",
}


@pytest.mark.parametrize("tail", CUTS.values(), ids=CUTS.keys())
async def test_the_link_ending_mid_frame_ends_the_mux_quietly(tail: bytes) -> None:
    async with link_pair() as (raw_link, guest_link), anyio.create_task_group() as tg:
        guest = Mux(guest_link, initiator=False)
        raw = RawPeer(raw_link)
        ended = anyio.Event()

        async def run() -> None:
            await guest.run()  # no error: a VM that died mid-write broke no rule
            ended.set()

        tg.start_soon(run)
        await raw.send(encode_frame(1, OPEN, b"agent"), encode_frame(1, DATA, b"abc"))
        _, channel = await guest.accept()
        await raw.send(tail)
        await raw_link.aclose()
        with anyio.fail_after(10):
            await ended.wait()
        assert await channel.receive() == b"abc"
        with pytest.raises(anyio.BrokenResourceError):
            await channel.receive()


async def test_run_runs_once() -> None:
    async with muxes() as (host, guest):
        await (await host.open("agent")).send(b"x")
        assert await (await guest.accept())[1].receive() == b"x"  # both runs are running
        with pytest.raises(RuntimeError):
            await host.run()
