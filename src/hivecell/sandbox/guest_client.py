"""Host-side JSON-RPC client for the guest agent.

One reader task (inside the client's own task group) routes responses to waiting callers,
heartbeats to the health tracker and ``exec.output`` chunks to the caller that asked for
them. Use it as an async context manager::

    async with GuestClient("unix:/path/guest.sock") as guest:
        await guest.call("ping")

The box on the other end is untrusted. Every frame is decoded with the protocol's limits and
checked against the shape of a response or notification; the first frame that breaks the
protocol closes the connection, and every waiting call raises ``GuestProtocolError`` (a
``GuestUnavailable``). Nothing a guest sends raises anything else out of this client.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import ByteStream, TaskGroup

from hivecell.errors import (
    Cancelled,
    ConfigError,
    GuestProtocolError,
    GuestUnavailable,
    Timeout,
    from_wire,
)
from hivecell.protocol import decoding
from hivecell.protocol.framing import FrameReader, FrameWriter, Oversized
from hivecell.sandbox.unixsock import connect_unix_nofollow

HEARTBEAT_INTERVAL = 2.0
DEFAULT_TIMEOUT = 120.0
GUEST_TIMEOUT_MARGIN = 15.0  # time for the guest to kill, drain and answer after its timeout
MISSED_HEARTBEATS = 3
# list_directory's largest answer (100 000 entries) is ~100 000 objects; more is hostile.
MAX_CONTAINERS = 250_000
THREAD_DECODE_BYTES = 1 << 20  # bigger frames are decoded off the event loop
MAX_ERROR_MESSAGE = 4096  # characters of a guest's error message kept (it ends up in traces)
log = logging.getLogger("hivecell.sandbox")
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
        self._closed: anyio.Event | None = None  # made in __aenter__, inside the event loop
        self._protocol_error = False
        self.last_heartbeat = 0.0
        self.on_notification: Callable[[str, dict[str, Any]], None] | None = None

    async def __aenter__(self) -> GuestClient:
        try:
            with anyio.fail_after(self._connect_timeout):
                self._stream = await _open(self.endpoint)
        except TimeoutError:  # a full backlog (an agent that stopped accepting), a slow TCP peer
            raise GuestUnavailable(
                f"the guest agent at {self.endpoint} did not accept a connection within "
                f"{self._connect_timeout:g} s; pass a larger connect_timeout if it is busy",
                op="connect",
                context={"endpoint": self.endpoint},
            ) from None
        self._writer = FrameWriter(self._stream)
        self._closed = anyio.Event()
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
        # The body's own exception is not handed to the task group: it would come out wrapped
        # in an ExceptionGroup, and callers' `except GuestUnavailable` would miss it. The
        # reader task was cancelled above; the body's error propagates as itself.
        await self._tg.__aexit__(None, None, None)
        return None

    @property
    def healthy(self) -> bool:
        """False once the guest missed three heartbeats in a row or the connection dropped."""
        if self._closed_reason:
            return False
        return time.monotonic() - self.last_heartbeat < HEARTBEAT_INTERVAL * MISSED_HEARTBEATS

    async def wait_lost(self) -> str:
        """Wait until the guest is lost: the connection dropped, or it missed
        ``MISSED_HEARTBEATS`` heartbeats in a row (a stopped or hung agent keeps its socket
        open, so only the silence tells). Returns why."""
        window = HEARTBEAT_INTERVAL * MISSED_HEARTBEATS
        while not self._closed_reason:
            silent_for = time.monotonic() - self.last_heartbeat
            if silent_for >= window:
                return (
                    f"the guest agent missed {MISSED_HEARTBEATS} heartbeats in a row "
                    f"(silent for {silent_for:.1f} s)"
                )
            assert self._closed is not None, "wait_lost needs an open client"
            with anyio.move_on_after(window - silent_for):
                await self._closed.wait()
        return f"connection to the guest lost: {self._closed_reason}"

    async def abort(self, reason: str) -> None:
        """Close the connection now: every waiting call raises ``GuestUnavailable``."""
        await self._close(reason)

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
            raise self._unavailable(method)
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending(on_output)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        try:
            await self._send(message, method, timeout)
            await self._wait(pending, request_id, method, timeout)
        finally:
            self._pending.pop(request_id, None)
        return self._unwrap(pending, method)

    def _unavailable(self, method: str) -> GuestUnavailable:
        reason = self._closed_reason or "client is not open"
        if self._protocol_error:
            return GuestProtocolError(
                f"closed the connection to the guest: {reason}",
                op=method,
                context={"endpoint": self.endpoint},
            )
        return GuestUnavailable(f"connection to the guest closed: {reason}", op=method)

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
            raise self._unavailable(method)
        if reply.get("error") is not None:
            raise from_wire(reply["error"], op=method)
        return reply.get("result")

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params}, method, None)

    async def _send(self, message: dict[str, Any], method: str, timeout: float | None) -> None:
        """A guest that stops reading must not hold the caller: the send shares its timeout."""
        assert self._writer is not None
        try:
            with anyio.fail_after(timeout):
                await self._writer.send(message)
        except TimeoutError:
            await self._close(f"the guest read no request for {timeout} s")
            raise GuestUnavailable(
                f"the guest agent stopped reading requests (waited {timeout} s)", op=method
            ) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._closed_reason = self._closed_reason or "connection broken"
            self._mark_closed()
            raise GuestUnavailable("the sandbox's guest agent is not reachable", op=method) from exc
        finally:
            if self._writer.torn:  # half a frame went out: the stream cannot carry another
                await self._close(self._closed_reason or "a request was cut off mid-write")

    async def _close(self, reason: str) -> None:
        self._closed_reason = self._closed_reason or reason
        self._mark_closed()
        for pending in self._pending.values():
            pending.event.set()
        if self._stream is not None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    def _mark_closed(self) -> None:
        if self._closed is not None:
            self._closed.set()

    async def _read_loop(self) -> None:
        assert self._stream is not None
        try:
            async for frame in FrameReader(self._stream):
                if isinstance(frame, Oversized):
                    raise _Violation(f"a frame of {frame.size} bytes, over the frame limit")
                if frame.strip():
                    await self._route(frame)
        except _Violation as exc:
            self._protocol_error = True
            log.warning("guest %s broke the protocol: %s", self.endpoint, exc)
            await self._close(f"protocol error: {exc}")
        except Exception as exc:  # whatever else a guest provokes ends this connection only
            self._protocol_error = True
            log.exception("reading from guest %s failed", self.endpoint)
            await self._close(f"protocol error: {type(exc).__name__}")
        finally:
            await self._close("the guest agent closed the connection")

    async def _route(self, frame: bytes) -> None:
        msg = await _decode(frame)
        if "method" in msg:
            await self._on_notification(msg["method"], msg.get("params", {}))
            return
        pending = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
        if pending is not None:  # else a late answer to a call that timed out
            pending.reply = msg
            pending.event.set()

    async def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "heartbeat":
            self.last_heartbeat = time.monotonic()
        elif method == "exec.output":
            request_id, stream, data = (params.get(k) for k in ("request_id", "stream", "data"))
            if type(request_id) is not int or not isinstance(stream, str) or type(data) is not str:
                raise _Violation("exec.output needs an integer request_id, a stream and data")
            pending = self._pending.get(request_id)
            if pending is not None and pending.on_output is not None:
                await _guarded(pending.on_output, stream, data)
        if self.on_notification is not None:
            try:
                self.on_notification(method, params)
            except Exception:  # the caller's bug must not close every caller's connection
                log.exception("on_notification failed for %s", method)


class _Violation(Exception):
    """A frame from the guest that the protocol forbids."""


async def _guarded(on_output: OutputHandler, stream: str, data: str) -> None:
    try:
        await on_output(stream, data)
    except Exception:
        log.exception("an exec output handler failed")


async def _decode(frame: bytes) -> dict[str, Any]:
    try:
        if len(frame) > THREAD_DECODE_BYTES:
            # abandoned on cancel: a closing client must not wait for a hostile frame's scan
            msg = await anyio.to_thread.run_sync(_decode_json, frame, abandon_on_cancel=True)
        else:
            msg = _decode_json(frame)
    except decoding.DecodeError as exc:
        raise _Violation(exc.message) from None
    problem = _message_problem(msg)
    if problem:
        raise _Violation(problem)
    return msg


def _decode_json(frame: bytes) -> Any:
    return decoding.decode(frame, max_containers=MAX_CONTAINERS)


def _message_problem(msg: Any) -> str:
    """What makes ``msg`` neither a response to us nor a notification ("" if nothing)."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return "not a JSON-RPC 2.0 object"
    if "method" in msg:
        ok = isinstance(msg["method"], str) and isinstance(msg.get("params", {}), dict)
        if not ok or "id" in msg or set(msg) - {"jsonrpc", "method", "params"}:
            return "malformed notification (the host serves no requests)"
        return ""
    if set(msg) - {"jsonrpc", "id", "result", "error"} or ("result" in msg) == ("error" in msg):
        return "a response needs exactly one of result and error"
    if msg.get("id") is not None and type(msg.get("id")) is not int:
        return "a response id the host never sent"
    if "error" in msg:
        return _error_problem(msg)
    return ""


def _error_problem(msg: dict[str, Any]) -> str:
    error = msg["error"]
    if not isinstance(error, dict) or set(error) - {"code", "message", "data"}:
        return "malformed error object"
    if type(error.get("code")) is not int or not isinstance(error.get("message"), str):
        return "error without an integer code and a message"
    if not isinstance(error.get("data", {}), dict):
        return "error data is not an object"
    error["message"] = error["message"][:MAX_ERROR_MESSAGE]
    return ""


def _effective_timeout(timeout: float | None, params: dict[str, Any] | None) -> float | None:
    if timeout is None or not params:
        return timeout
    own = max(
        (
            v
            for k in ("timeout", "seconds", "window_timeout")  # the guest's own waits
            if isinstance(v := params.get(k), int | float)
        ),
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
