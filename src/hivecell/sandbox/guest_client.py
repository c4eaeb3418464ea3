"""Host-side JSON-RPC client for the guest agent.

One reader task (inside the client's own task group) routes responses to waiting callers,
heartbeats to the health tracker and ``exec.output`` chunks to the caller that asked for
them. Use it as an async context manager::

    async with GuestClient("unix:/path/guest.sock") as guest:
        await guest.call("ping")
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import ByteStream, TaskGroup

from hivecell.errors import Cancelled, ConfigError, GuestUnavailable, Timeout, from_wire
from hivecell.protocol.framing import FrameReader, FrameWriter, Oversized
from hivecell.sandbox.unixsock import connect_unix_nofollow

HEARTBEAT_INTERVAL = 2.0
DEFAULT_TIMEOUT = 120.0
GUEST_TIMEOUT_MARGIN = 15.0  # time for the guest to kill, drain and answer after its timeout
MISSED_HEARTBEATS = 3
OutputHandler = Callable[[str, str], Awaitable[None]]  # (stream name, text)


class _Pending:
    __slots__ = ("event", "on_output", "reply")

    def __init__(self, on_output: OutputHandler | None) -> None:
        self.event = anyio.Event()
        self.reply: dict[str, Any] | None = None
        self.on_output = on_output


class GuestClient:
    def __init__(self, endpoint: str, *, token: str | None = None, connect_timeout: float = 5.0):
        self.endpoint = endpoint
        self._token = token
        self._connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._stream: ByteStream | None = None
        self._writer: FrameWriter | None = None
        self._tg: TaskGroup | None = None
        self._closed_reason = ""
        self.last_heartbeat = 0.0
        self.on_notification: Callable[[str, dict[str, Any]], None] | None = None

    async def __aenter__(self) -> GuestClient:
        with anyio.fail_after(self._connect_timeout):
            self._stream = await _open(self.endpoint)
        self._writer = FrameWriter(self._stream)
        self.last_heartbeat = time.monotonic()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read_loop)
        if self._token is not None:
            try:
                await self.call("authenticate", {"token": self._token})
            except BaseException:
                # the caller's `async with` never calls __aexit__ after a failed __aenter__:
                # close the task group here or its cancel scope stays on the task's stack
                await self.__aexit__(None, None, None)
                raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None and self._stream is not None
        self._tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
        return await self._tg.__aexit__(et, e, tb)

    @property
    def healthy(self) -> bool:
        """False once the guest missed three heartbeats in a row or the connection dropped."""
        if self._closed_reason:
            return False
        return time.monotonic() - self.last_heartbeat < HEARTBEAT_INTERVAL * MISSED_HEARTBEATS

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        on_output: OutputHandler | None = None,
    ) -> Any:
        """Call a guest method; raises the typed HivecellError the guest reported.

        The wait is never shorter than the method's own ``timeout``/``seconds`` param plus a
        margin, so a long exec or wait fails on the guest's clock with its partial output.
        """
        timeout = _effective_timeout(timeout, params)
        if self._closed_reason or self._writer is None:
            raise GuestUnavailable(self._closed_reason or "client is not open", op=method)
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending(on_output)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        try:
            await self._send(message, method)
            await self._wait(pending, request_id, method, timeout)
        finally:
            self._pending.pop(request_id, None)
        return self._unwrap(pending, method)

    async def _wait(
        self, pending: _Pending, request_id: int, method: str, timeout: float | None
    ) -> None:
        try:
            with anyio.fail_after(timeout):
                await pending.event.wait()
        except TimeoutError:
            await self._cancel_remote(request_id)
            raise Timeout(
                f"no answer within {timeout} s; pass a larger timeout", op=method
            ) from None
        except anyio.get_cancelled_exc_class():
            await self._cancel_remote(request_id)
            raise

    async def _cancel_remote(self, request_id: int) -> None:
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(1),
            contextlib.suppress(GuestUnavailable),
        ):
            await self.notify("cancel", {"id": request_id})

    def _unwrap(self, pending: _Pending, method: str) -> Any:
        reply = pending.reply
        if reply is None:
            raise GuestUnavailable(
                f"connection to the guest closed: {self._closed_reason}", op=method
            )
        if reply.get("error") is not None:
            raise from_wire(reply["error"], op=method)
        return reply.get("result")

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params}, method)

    async def _send(self, message: dict[str, Any], method: str) -> None:
        assert self._writer is not None
        try:
            await self._writer.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._closed_reason = self._closed_reason or "connection broken"
            raise GuestUnavailable("the sandbox's guest agent is not reachable", op=method) from exc

    async def _read_loop(self) -> None:
        assert self._stream is not None
        try:
            async for frame in FrameReader(self._stream):
                if not isinstance(frame, Oversized) and frame.strip():
                    await self._route(frame)
        finally:
            self._closed_reason = self._closed_reason or "the guest agent closed the connection"
            for pending in self._pending.values():
                pending.event.set()

    async def _route(self, frame: bytes) -> None:
        try:
            msg = json.loads(frame)
        except ValueError:
            return  # a guest never sends this; ignore rather than kill every waiter
        if not isinstance(msg, dict):
            return
        if "method" in msg:
            await self._on_notification(msg["method"], msg.get("params") or {})
            return
        pending = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
        if pending is not None:
            pending.reply = msg
            pending.event.set()

    async def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "heartbeat":
            self.last_heartbeat = time.monotonic()
        elif method == "exec.output":
            pending = self._pending.get(params.get("request_id"))  # type: ignore[arg-type]
            if pending is not None and pending.on_output is not None:
                await pending.on_output(str(params.get("stream")), str(params.get("data")))
        if self.on_notification is not None:
            self.on_notification(method, params)


def _effective_timeout(timeout: float | None, params: dict[str, Any] | None) -> float | None:
    if timeout is None or not params:
        return timeout
    own = max(
        (v for k in ("timeout", "seconds") if isinstance(v := params.get(k), int | float)),
        default=0.0,
    )
    return max(timeout, own + GUEST_TIMEOUT_MARGIN)


async def _open(endpoint: str) -> ByteStream:
    kind, _, where = endpoint.partition(":")
    try:
        if kind == "unix":
            return await connect_unix_nofollow(
                where
            )  # host-only folder; no-follow as a second line
        if kind == "tcp":
            host, _, port = where.rpartition(":")
            return await anyio.connect_tcp(host, int(port))
    except OSError as exc:
        raise GuestUnavailable(
            f"cannot reach the guest agent at {endpoint}: {exc.strerror or exc}",
            op="connect",
            context={"endpoint": endpoint},
        ) from exc
    raise ConfigError(f"unknown guest endpoint {endpoint!r}; expected unix:PATH or tcp:HOST:PORT")


__all__ = ["Cancelled", "GuestClient"]
