"""FrameReader/FrameWriter over a real socket pair, with controlled chunk boundaries."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketStream, UNIXSocketStream

from hivecell.protocol.framing import FrameReader, FrameWriter, Oversized, encode

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    left, right = socket.socketpair()
    a = await UNIXSocketStream.from_socket(left)
    b = await UNIXSocketStream.from_socket(right)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def frames_of(chunks: list[bytes], max_bytes: int = 1024) -> list[bytes | Oversized]:
    """Send ``chunks`` one at a time (the reader drains each before the next), then EOF."""
    frames: list[bytes | Oversized] = []
    async with socket_pair() as (sender, receiver):

        async def send_all() -> None:
            for chunk in chunks:
                await sender.send(chunk)
                await anyio.sleep(0.005)  # let the reader take this chunk on its own
            await sender.send_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_all)
            async for frame in FrameReader(receiver, max_bytes):
                frames.append(frame)
    return frames


async def test_frames_split_across_chunks() -> None:
    chunks = [b'{"a"', b':1}\n{"b":2}\n{"c"', b":3}", b"\n"]
    assert await frames_of(chunks) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


async def test_one_byte_at_a_time() -> None:
    data = b'{"x":"y"}\n[1,2]\n'
    assert await frames_of([bytes([b]) for b in data]) == [b'{"x":"y"}', b"[1,2]"]


async def test_many_frames_in_one_chunk() -> None:
    data = b"".join(b'{"i":%d}\n' % i for i in range(100))
    frames = await frames_of([data])
    assert [json.loads(f)["i"] for f in frames if isinstance(f, bytes)] == list(range(100))


async def test_last_frame_without_newline() -> None:
    assert await frames_of([b'{"a":1}\n{"b"', b":2}"]) == [b'{"a":1}', b'{"b":2}']


async def test_empty_lines_are_yielded_empty() -> None:
    assert await frames_of([b"\n\n{}\n", b"\n"]) == [b"", b"", b"{}", b""]


async def test_frame_at_the_limit_passes_one_over_is_oversized() -> None:
    frames = await frames_of([b"x" * 100 + b"\n" + b"y" * 101 + b"\n"], max_bytes=100)
    assert frames == [b"x" * 100, Oversized(101)]


async def test_oversized_frame_is_skipped_and_the_next_frame_works() -> None:
    chunks = [b"z" * 700, b"z" * 700, b"z" * 700 + b"\n" + b'{"ok":1}', b"\n"]
    assert await frames_of(chunks, max_bytes=1000) == [Oversized(2100), b'{"ok":1}']


async def test_oversized_frame_in_one_chunk_then_more() -> None:
    frames = await frames_of([b"q" * 5000 + b"\nnext\n"], max_bytes=1000)
    assert frames == [Oversized(5000), b"next"]


async def test_oversized_frame_cut_by_end_of_stream() -> None:
    assert await frames_of([b"a\n", b"w" * 3000], max_bytes=1000) == [b"a", Oversized(3000)]


async def test_reader_ends_cleanly_on_a_closed_peer() -> None:
    async with socket_pair() as (sender, receiver):
        await sender.send(b"partial")
        await sender.aclose()
        assert [f async for f in FrameReader(receiver)] == [b"partial"]


def test_encode_keeps_one_line_and_unicode() -> None:
    data = encode({"text": "line\nbreak\r\u2028 ✓", "n": 1})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {"text": "line\nbreak\r\u2028 ✓", "n": 1}
    assert "✓".encode() in data


async def test_concurrent_writes_never_interleave() -> None:
    async with socket_pair() as (sender, receiver):
        writer = FrameWriter(sender)
        payload = "p" * 200_000  # several socket writes per message

        async def write_all() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(writer.send, {"i": i, "payload": payload})
            await sender.send_eof()

        got = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_all)
            async for frame in FrameReader(receiver):
                assert isinstance(frame, bytes)
                got.append(json.loads(frame))
    assert sorted(m["i"] for m in got) == list(range(30))
    assert all(m["payload"] == payload for m in got)
