"""The host's unix socket streams (guest agent, VNC): a receive cancelled in the instant data
arrives must not leave the loop calling into a cancelled future; closing wakes a receive."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import ByteStream
from anyio.lowlevel import checkpoint

from hivecell.protocol.unixstream import connect_unix

pytestmark = pytest.mark.anyio
Connect = Callable[[str], Awaitable[ByteStream]]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    yield path, server
    server.close()


async def cancel_as_data_arrives(connect: Connect, path: str, server: socket.socket) -> None:
    """The peer's byte and the cancellation land in the same loop turn: the worst order."""
    stream = await connect(path)
    peer, _ = server.accept()  # already queued: connect() returned
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.receive)
            await wait_all_tasks_blocked()  # the receive is waiting for data
            peer.send(b"x")
            # One yield: this task's next step is queued before the loop polls, so the poll
            # that sees the byte queues its reader callback after our cancellation.
            await checkpoint()
            tg.cancel_scope.cancel()
        await checkpoint()  # let the loop run its callbacks while the test still watches
    finally:
        await stream.aclose()
        peer.close()


async def test_a_receive_cancelled_as_data_arrives_is_quiet(
    listener: tuple[str, socket.socket],
) -> None:
    # anyio's own unix stream on asyncio raises InvalidStateError from a loop callback here
    # (the anyio test runner reports it); ours must not, on every try.
    for _ in range(20):
        await cancel_as_data_arrives(connect_unix, *listener)


async def test_close_wakes_a_waiting_receive_and_the_stream_stays_closed(
    listener: tuple[str, socket.socket],
) -> None:
    path, server = listener
    stream = await connect_unix(path)
    peer, _ = server.accept()
    errors: list[type[BaseException]] = []

    async def receive() -> None:
        try:
            await stream.receive()
        except BaseException as exc:
            errors.append(type(exc))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await wait_all_tasks_blocked()
            await stream.aclose()
    assert errors == [anyio.ClosedResourceError]
    with pytest.raises(anyio.ClosedResourceError):
        await stream.send(b"late")
    await stream.aclose()  # twice is fine
    peer.close()


async def test_end_of_stream_and_a_broken_peer(listener: tuple[str, socket.socket]) -> None:
    path, server = listener
    async with await connect_unix(path) as stream:
        peer, _ = server.accept()
        peer.sendall(b"bye")
        peer.close()
        assert await stream.receive() == b"bye"
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        with pytest.raises(anyio.BrokenResourceError):
            for _ in range(1000):  # the peer is gone: writes fail (EPIPE) once it is noticed
                await stream.send(b"x" * 65536)


async def test_close_does_not_wait_for_a_peer_that_stopped_reading(
    listener: tuple[str, socket.socket],
) -> None:
    path, server = listener
    stream = await connect_unix(path)
    peer, _ = server.accept()  # never reads: the kernel buffers fill, then ours
    with anyio.move_on_after(0.5):
        while True:
            await stream.send(b"x" * 65536)
    with anyio.fail_after(10):  # a close that waited for the peer would never return
        await stream.aclose()
    peer.close()
