"""``ScriptedLLMServer``: a real OpenAI-compatible HTTP server on loopback that plays a script.

The one fake of the model layer: tests, the CLI and the dashboard talk to it over real HTTP
with the real SDK. It serves ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is
true, tool-call deltas and the usage chunk included) and ``GET /v1/models``, and records every
request. ``GET /_scripted/requests`` returns the recorded requests to another process.

In-process::

    async with ScriptedLLMServer([Reply(text="hi")]) as server:
        client = LLMClient(ProviderConfig(base_url=server.base_url, ...))

As a process (prints the base URL on the first line of stdout, stops on SIGINT/SIGTERM)::

    python -m hivecell.agent.llm.scripted --script script.json --port 0
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import h11
from pydantic import BaseModel

from hivecell.agent.llm import script as wire
from hivecell.agent.llm.script import Disconnect, Echo, Failure, Reply, ScriptItem, load_script

HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
_CLIENT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, h11.ProtocolError)


class RecordedRequest(BaseModel):
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    # time.perf_counter() when the whole request had been read; on Linux that is
    # CLOCK_MONOTONIC, so other processes on the host can compare it with their own clock.
    received_at: float | None = None


class ScriptedLLMServer:
    """Plays ``steps`` in arrival order, then ``default`` (or a 500 naming the exhaustion)."""

    def __init__(
        self,
        steps: Iterable[ScriptItem] = (),
        *,
        default: ScriptItem | None = None,
        models: Sequence[str] = ("scripted-model",),
        port: int = 0,
    ) -> None:
        self.requests: list[RecordedRequest] = []
        self.models = list(models)
        self._steps: deque[ScriptItem] = deque(steps)
        self._default = default
        self._port = port
        self._served = 0
        self._stack: AsyncExitStack | None = None
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("ScriptedLLMServer is not running: use `async with`")
        return int(self._listener.extra(anyio.abc.SocketAttribute.local_port))

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of every chat completion request, in arrival order."""
        return [r.body for r in self.requests if r.path == CHAT_PATH]

    async def __aenter__(self) -> ScriptedLLMServer:
        async with AsyncExitStack() as stack:
            listener = await anyio.create_tcp_listener(local_host=HOST, local_port=self._port)
            self._listener = await stack.enter_async_context(listener)
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(listener.serve, self._connection, tg)
            stack.callback(tg.cancel_scope.cancel)  # runs first on exit: stop serving
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
        self._listener = None

    # --- HTTP/1.1 over h11 -------------------------------------------------------------------
    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            with suppress(*_CLIENT_GONE):
                while await self._serve_one(conn, stream):
                    conn.start_next_cycle()

    async def _serve_one(self, conn: h11.Connection, stream: anyio.abc.SocketStream) -> bool:
        """Answer one request; False when the connection must close."""
        request, body = await _read_request(conn, stream)
        if request is None:
            return False
        answer = _Answer(conn, stream)
        keep = await self._route(request, body, answer)
        return keep and conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _route(self, request: h11.Request, body: bytes, answer: _Answer) -> bool:
        arrived = time.perf_counter()
        method, path = request.method.decode(), request.target.decode().split("?")[0]
        if (method, path) == ("GET", "/_scripted/requests"):
            await answer.json(200, [r.model_dump() for r in self.requests])
            return True
        parsed = _json_or_none(body)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.requests.append(
            RecordedRequest(
                method=method,
                path=path,
                headers=headers,
                body=parsed,
                received_at=arrived,
            )
        )
        if (method, path) == ("POST", CHAT_PATH):
            return await self._chat(parsed, answer)
        if (method, path) == ("GET", "/v1/models"):
            await answer.json(200, self._model_list())
            return True
        await answer.error(Failure(status=404, message=f"no route {method} {path}"))
        return True

    # --- the OpenAI API ----------------------------------------------------------------------
    async def _chat(self, request: Any, answer: _Answer) -> bool:
        self._served += 1
        if not isinstance(request, dict):
            await answer.error(Failure(status=400, message="request body is not a JSON object"))
            return True
        step = self._next_step(request)
        if isinstance(step, Disconnect):
            return False
        await anyio.sleep(step.delay_s)
        if isinstance(step, Failure):
            await answer.error(step)
        else:
            await self._reply(step, request, answer)
        return True

    async def _reply(self, reply: Reply, request: dict[str, Any], answer: _Answer) -> None:
        model = reply.model or str(request.get("model") or self.models[0])
        if not request.get("stream"):
            await answer.json(200, wire.completion(reply, model=model, seq=self._served))
            return
        options = request.get("stream_options") or {}
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = wire.chunks(reply, model=model, seq=self._served, include_usage=include_usage)
        await answer.sse(events)

    def _next_step(self, request: dict[str, Any]) -> Reply | Failure | Disconnect:
        item = self._steps.popleft() if self._steps else self._default
        if item is None:
            return Failure(
                status=500,
                message=f"script exhausted: request #{self._served} "
                "has no step left (add steps or a default)",
            )
        try:
            step = item(request) if callable(item) else item
        except Exception as exc:  # a broken reactive step is the test's bug: show it, don't hang
            return Failure(status=500, message=f"reactive step raised {exc!r}")
        return wire.echo_reply(step, request) if isinstance(step, Echo) else step

    def _model_list(self) -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "hivecell-scripted"}
            for m in self.models
        ]
        return {"object": "list", "data": data}


class _Answer:
    """Writes one HTTP response on an h11 connection."""

    def __init__(self, conn: h11.Connection, stream: anyio.abc.SocketStream) -> None:
        self._conn = conn
        self._stream = stream

    async def json(
        self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        await self.raw(status, json.dumps(payload).encode(), headers)

    async def error(self, failure: Failure) -> None:
        extra = [("retry-after", failure.retry_after)] if failure.retry_after is not None else []
        await self.raw(failure.status, wire.error_body(failure), extra)

    async def raw(self, status: int, body: bytes, headers: Sequence[tuple[str, str]]) -> None:
        head = [("content-type", "application/json"), ("content-length", str(len(body))), *headers]
        await self._send(h11.Response(status_code=status, headers=head))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def sse(self, events: Iterable[dict[str, Any]]) -> None:
        # No content-length: h11 sends chunked, one chunk per event, as real servers do.
        head = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        await self._send(h11.Response(status_code=200, headers=head))
        for event in events:
            await self._send(h11.Data(data=f"data: {json.dumps(event)}\n\n".encode()))
        await self._send(h11.Data(data=b"data: [DONE]\n\n"))
        await self._send(h11.EndOfMessage())

    async def _send(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            await self._stream.send(data)


async def _read_request(
    conn: h11.Connection, stream: anyio.abc.SocketStream
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await _receive(stream))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


async def _receive(stream: anyio.abc.SocketStream) -> bytes:
    try:
        return await stream.receive()
    except anyio.EndOfStream:
        return b""  # tells h11 the peer closed


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


# --- as a process ---------------------------------------------------------------------------
async def _serve_until_signal(server: ScriptedLLMServer) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server:
            print(server.base_url, flush=True)
            async for _ in signals:
                return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hivecell.agent.llm.scripted",
        description="Serve a scripted OpenAI-compatible endpoint on 127.0.0.1.",
    )
    parser.add_argument("--script", type=Path, required=True, help="JSON script file")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    args = parser.parse_args(argv)
    try:
        script = load_script(args.script)
    except (OSError, ValueError) as exc:
        print(f"error: cannot load script {args.script}: {exc}", file=sys.stderr)
        return 2
    server = ScriptedLLMServer(
        script.steps, default=script.default, models=script.models, port=args.port
    )
    anyio.run(_serve_until_signal, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
