"""Live events for every open dashboard: a hub that numbers and fans out, and the WebSocket
connection that carries them.

Fan-out never waits for a client: each subscriber has a bounded queue, and one that is full is
dropped (its socket closed with 1008 "too slow"), so a stalled browser cannot hold up others.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

EVENT_TYPES = (
    "task.created",
    "task.status",
    "task.step",
    "task.question",
    "task.approval",
    "task.finished",
    "sandbox.created",
    "sandbox.destroyed",
    "sandbox.stats",
    "crew.planned",
    "crew.started",
    "crew.agent_ready",
    "crew.agent_done",
    "crew.todo_assigned",
    "crew.todo_started",
    "crew.todo_done",
    "crew.todo_failed",
    "crew.todo_cancelled",
    "crew.todos_changed",
    "crew.note",
    "crew.completed",
    "session.created",
    "session.status",
    "session.audit",
    "session.merged",
    "session.destroyed",
)
QUEUE_SIZE = 1000
TOO_SLOW = 1008


class Subscriber:
    def __init__(self, size: int) -> None:
        self.send: MemoryObjectSendStream[dict[str, Any]]
        self.receive: MemoryObjectReceiveStream[dict[str, Any]]
        self.send, self.receive = anyio.create_memory_object_stream[dict[str, Any]](size)
        self.overflowed = False


class EventHub:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.seq = 0
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()

    def publish(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Number the event and hand it to every subscriber without waiting."""
        self.seq += 1
        event = {"seq": self.seq, "type": kind, "time": time.time(), "data": data}
        for subscriber in list(self._subscribers):
            try:
                subscriber.send.send_nowait(event)
            except anyio.WouldBlock:
                self._drop(subscriber)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(subscriber)
        return event

    @contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        subscriber = Subscriber(self._queue_size)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)
            subscriber.send.close()
            subscriber.receive.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _drop(self, subscriber: Subscriber) -> None:
        # Closing the send side ends the client's stream once it drains what it already has.
        subscriber.overflowed = True
        self._subscribers.discard(subscriber)
        subscriber.send.close()


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class EventsConnection:
    """One ``/events`` socket: CONNECTING -> OPEN -> CLOSING -> CLOSED.

    Two tasks in one task group per connection: the writer forwards events, the reader watches
    for the client going away (and ignores what it says). Whichever ends first cancels the other.
    """

    def __init__(self, websocket: WebSocket, hub: EventHub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.state = State.CONNECTING

    async def run(self) -> None:
        with self.hub.subscribe() as subscriber:
            await self.websocket.accept()
            self.state = State.OPEN
            await self._send(
                {
                    "seq": self.hub.seq,
                    "type": "hello",
                    "time": time.time(),
                    "data": {"types": list(EVENT_TYPES)},
                }
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, tg.cancel_scope)
                await self._write(subscriber)
                tg.cancel_scope.cancel()
            await self._close(subscriber)

    async def _read(self, scope: anyio.CancelScope) -> None:
        while self.state is State.OPEN:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.state = State.CLOSED
        scope.cancel()

    async def _write(self, subscriber: Subscriber) -> None:
        async for event in subscriber.receive:
            if self.state is not State.OPEN:
                return
            await self._send(event)

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self.websocket.send_text(json.dumps(event, default=str))
        except (WebSocketDisconnect, OSError, RuntimeError):
            self.state = State.CLOSED

    async def _close(self, subscriber: Subscriber) -> None:
        if self.state is not State.OPEN:
            self.state = State.CLOSED
            return
        self.state = State.CLOSING
        reason = "too slow: events were dropped, reconnect" if subscriber.overflowed else ""
        with suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self.websocket.close(TOO_SLOW if subscriber.overflowed else 1000, reason)
        self.state = State.CLOSED
