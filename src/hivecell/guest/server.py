"""One JSON-RPC connection: read frames, run each request in its own cancel scope, answer.

The connection is an explicit state machine (authenticating -> ready -> closed). Every
request runs in the connection's task group with a cancel scope registered under its id,
so ``cancel`` can stop it and a dropped connection stops all of them.

Whatever a peer sends, the worst it gets is an error reply or a closed connection: parsing
never raises past ``jsonrpc.parse_request``, a reply that cannot be encoded becomes an
internal error, and anything else that escapes is logged and closes this connection only.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import logging
import time
from typing import Any

import anyio
from anyio.abc import ByteStream, TaskGroup
from pydantic import ValidationError

from hivecell.errors import Cancelled, HivecellError, ToolFailed, Unauthenticated
from hivecell.guest.context import CallContext, Services
from hivecell.guest.dispatch import Dispatcher
from hivecell.protocol import jsonrpc
from hivecell.protocol.framing import MAX_FRAME_BYTES, FrameReader, FrameWriter, Oversized

log = logging.getLogger("hivecell.guest")

# Requests one connection may have running at once; a peer that sends more without reading
# answers gets an error per extra request instead of an unbounded pile of tasks.
MAX_INFLIGHT = 256
WRITE_TIMEOUT = 30.0  # seconds a reply may wait for a peer that does not read


class ConnState(enum.Enum):
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSED = "closed"


class Connection:
    def __init__(
        self,
        stream: ByteStream,
        dispatcher: Dispatcher,
        services: Services,
        max_frame: int = MAX_FRAME_BYTES,
    ) -> None:
        self._stream = stream
        self._dispatcher = dispatcher
        self._services = services
        self._max_frame = max_frame
        self._writer = FrameWriter(stream, max_frame)
        self._inflight: dict[jsonrpc.RequestId, anyio.CancelScope] = {}
        self._running = 0  # request tasks, notifications included
        needs_auth = services.config.token is not None
        self.state = ConnState.AUTHENTICATING if needs_auth else ConnState.READY

    async def serve(self) -> None:
        """Serve until the peer leaves; never raises anything but cancellation."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat)
                await self._read_loop(tg)
                tg.cancel_scope.cancel()  # peer went away: stop its in-flight work
        except Exception:  # a bug here must cost this connection, never the listener
            log.exception("connection failed; closing it")
        finally:
            self.state = ConnState.CLOSED
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _read_loop(self, tg: TaskGroup) -> None:
        async for frame in FrameReader(self._stream, self._max_frame):
            if isinstance(frame, Oversized):
                await self._send_error(
                    None,
                    jsonrpc.INVALID_REQUEST,
                    f"frame of {frame.size} bytes exceeds the {self._max_frame}-byte limit; "
                    "send large files in chunks (read_file offset/length)",
                )
                continue
            if frame.strip():
                await self._accept(frame, tg)

    async def _accept(self, frame: bytes, tg: TaskGroup) -> None:
        try:
            request = jsonrpc.parse_request(frame)
        except jsonrpc.BadFrame as bad:
            await self._send_error(bad.request_id, bad.code, bad.message)
            return
        if self.state is ConnState.AUTHENTICATING and request.method != "authenticate":
            await self._reply_exception(
                request,
                Unauthenticated(
                    "call authenticate with the sandbox token first", op=request.method
                ),
            )
        elif request.method in ("authenticate", "cancel"):
            await self._handle_inline(request)  # answered in order, never queued behind work
        elif self._running >= MAX_INFLIGHT:
            busy = ToolFailed(
                f"{MAX_INFLIGHT} requests are already running on this connection; "
                "wait for their answers or open another connection",
                op=request.method,
                context={"limit": MAX_INFLIGHT},
                retryable=True,
            )
            await self._reply_exception(request, busy)
        else:
            self._running += 1
            tg.start_soon(self._run, request)

    async def _handle_inline(self, request: jsonrpc.Request) -> None:
        try:
            if request.method == "authenticate":
                result = self._authenticate(request.params or {})
            else:
                result = self._cancel(request.params or {})
        except Exception as exc:
            await self._reply_exception(request, exc)
            return
        if not request.is_notification:
            await self._write(jsonrpc.result_message(request.id, result))

    def _authenticate(self, params: dict[str, Any]) -> dict[str, Any]:
        from hivecell.protocol.methods import AuthenticateParams

        token = AuthenticateParams.model_validate(params).token
        expected = self._services.config.token
        if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
            raise Unauthenticated("wrong token; use the token printed when the sandbox was created")
        self.state = ConnState.READY
        return {"ok": True}

    def _cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        from hivecell.protocol.methods import CancelParams

        target = CancelParams.model_validate(params).id
        scope = self._inflight.get(target)
        if scope is not None:
            scope.cancel()
        return {"cancelled": scope is not None}

    async def _run(self, request: jsonrpc.Request) -> None:
        try:
            with self._services.idle.activity():
                await self._run_request(request)
        finally:
            self._running -= 1

    async def _run_request(self, request: jsonrpc.Request) -> None:
        ctx = CallContext(self._services, request.id, self._notify)
        key = request.id if request.id is not None else object()
        with anyio.CancelScope() as scope:
            if not request.is_notification:
                self._inflight[key] = scope  # type: ignore[index]
            try:
                result = await self._dispatcher.call(request.method, request.params, ctx)
            except Exception as exc:
                log.debug("request %s failed", request.method, exc_info=True)
                await self._reply_exception(request, exc)
                return
            finally:
                # a reused id may have replaced our entry: never drop the newer scope
                if self._inflight.get(key) is scope:  # type: ignore[call-overload]
                    del self._inflight[key]  # type: ignore[arg-type]
            if not request.is_notification:
                await self._send_result(request, result)
        if scope.cancelled_caught and not request.is_notification:
            with anyio.CancelScope(shield=True):
                await self._reply_exception(
                    request, Cancelled("cancelled by a cancel request", op=request.method)
                )

    async def _send_result(self, request: jsonrpc.Request, result: Any) -> None:
        try:
            await self._write(jsonrpc.result_message(request.id, result))
        except Exception as exc:  # too large, NaN, ...: the caller still gets an answer
            await self._reply_exception(request, exc)

    async def _reply_exception(self, request: jsonrpc.Request, exc: BaseException) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, HivecellError | ValidationError):
            log.exception("unexpected error in %s", request.method, exc_info=exc)
        if request.is_notification:
            return
        try:
            await self._write(jsonrpc.exception_to_error(request.id, exc, request.method))
        except Exception:  # its context would not encode: the bare code still does
            log.exception("could not send the error of %s", request.method)
            await self._send_error(request.id, jsonrpc.INTERNAL_ERROR, "internal error")

    async def _write(self, message: dict[str, Any]) -> None:
        # Shielded: a cancel landing mid-write would leave half a frame on the wire. Bounded:
        # a peer that stops reading must not hold this task (or a shutdown) forever.
        deadline = anyio.current_time() + WRITE_TIMEOUT
        with (
            anyio.CancelScope(shield=True, deadline=deadline),
            contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
        ):
            await self._writer.send(message)
        if self._writer.torn:  # nothing more can be said on this stream: end the connection
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _send_error(self, request_id: jsonrpc.RequestId | None, code: int, msg: str) -> None:
        await self._write(jsonrpc.error_message(request_id, code, msg))

    async def _notify(self, method: str, params: dict[str, Any]) -> None:
        await self._write(jsonrpc.notification(method, params))

    async def _heartbeat(self) -> None:
        seq = 0
        while True:
            if self.state is ConnState.READY:
                seq += 1
                await self._notify("heartbeat", {"seq": seq, "time": time.time()})
            await anyio.sleep(self._services.config.heartbeat_interval)
