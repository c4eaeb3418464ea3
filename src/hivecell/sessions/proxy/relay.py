"""One connection from a session's agent: HTTP/1.1 (h11) in, the provider's API out.

Only model routes pass (chat completions, responses, completions, embeddings and the model
list for OpenAI-style providers; messages, token counting and the model list for
Anthropic), in origin form: the proxy is never a way to reach another host. The agent's
own key and any other header are dropped; the provider's key is added here, so it never
enters the box. Answers stream through as they arrive; their usage is counted on the way
(``usage``) and every call lands in the session's audit log. A spent budget refuses the
call before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import h11
import httpx2 as httpx

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.pricing import ModelPrice, PriceTable
from hivecell.agent.llm.response import Usage
from hivecell.errors import HivecellError
from hivecell.sessions.audit import Outcome
from hivecell.sessions.proxy.usage import StreamMeter, usage_of

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024  # a long conversation with screenshots, not a disk image
MAX_PARSED = 16 * 1024 * 1024  # a whole (non-streamed) answer read for its usage
IDLE_TIMEOUT = 600.0  # a kept-alive connection with no request for this long is closed
ANTHROPIC_VERSION = "2023-06-01"
OPENAI_ROUTES = {
    ("POST", "/chat/completions"),
    ("POST", "/responses"),
    ("POST", "/completions"),
    ("POST", "/embeddings"),
    ("GET", "/models"),
}
ANTHROPIC_ROUTES = {
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
}
# Request headers the provider may see (besides its key, added here).
PASSED_REQUEST = {"content-type", "accept", "anthropic-version", "anthropic-beta", "openai-beta"}
PASSED_RESPONSE = {"content-type", "retry-after", "request-id", "x-request-id", "cache-control"}
PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "openai-")
_CLIENT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)

Resolve = Callable[[str | None], Awaitable[ProviderConfig]]


@dataclass(frozen=True)
class Call:
    """One model call as the audit and the ledger see it."""

    method: str
    target: str  # the provider's URL, no query
    model: str | None
    status: int
    usage: Usage | None
    cost_usd: float | None
    outcome: Outcome
    why: str | None = None


class Refusal(Exception):
    """An answer made here, not by the provider."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class SessionGate:
    """What the relay needs to know about its session; the host makes one per session."""

    def __init__(
        self,
        resolve: Resolve,
        over_budget: Callable[[str | None, dict[str, ModelPrice]], Awaitable[str | None]],
        record: Callable[[Call], Awaitable[None]],
    ) -> None:
        self.resolve = resolve  # the session's provider, for the request's model
        self.over_budget = over_budget  # why a call must not be made, or None
        self.record = record


async def serve(stream: anyio.abc.ByteStream, gate: SessionGate, client: httpx.AsyncClient) -> None:
    """Answer requests on ``stream`` until either side closes it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    async with stream:
        with suppress(*_CLIENT_GONE, h11.ProtocolError):
            while True:
                with anyio.move_on_after(IDLE_TIMEOUT) as idle:
                    read = await _read(conn, stream)
                if idle.cancelled_caught or read is None:
                    return
                if isinstance(read, Refusal):
                    await _refuse(conn, stream, read, anthropic=False)
                    return  # the request was not read to its end: nothing more can be
                request, body = read
                await _answer(conn, stream, request, body, gate, client)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()


async def _read(
    conn: h11.Connection, stream: anyio.abc.ByteStream
) -> tuple[h11.Request, bytes] | Refusal | None:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Refusal(400, "invalid_request", f"not a valid HTTP/1.1 request: {exc}")
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return Refusal(413, "request_too_large", f"request body over {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _answer(
    conn: h11.Connection,
    stream: anyio.abc.ByteStream,
    request: h11.Request,
    body: bytes,
    gate: SessionGate,
    client: httpx.AsyncClient,
) -> None:
    method = request.method.decode("ascii", "replace")
    target = request.target.decode("ascii", "replace")
    payload = _json(body)
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    anthropic = target.startswith("/v1/messages")
    try:
        provider = await _provider(gate, model)
        anthropic = provider.kind == "anthropic"
        url = upstream_url(provider, method, target)
        why = await gate.over_budget(model, provider.prices) if method == "POST" else None
        if why is not None:
            raise Refusal(403, "budget_exceeded", why)
    except Refusal as refusal:
        await gate.record(
            Call(method, target, model, refusal.status, None, None, "blocked", refusal.message)
        )
        await _refuse(conn, stream, refusal, anthropic=anthropic)
        return
    body = _ask_for_usage(target, payload, body)
    headers = _request_headers(request.headers, provider)
    await _forward(conn, stream, client, (method, url, headers, body), provider, model, gate)


async def _provider(gate: SessionGate, model: str | None) -> ProviderConfig:
    try:
        return await gate.resolve(model)
    except HivecellError as exc:
        raise Refusal(503, "provider_not_configured", exc.message) from None


def upstream_url(provider: ProviderConfig, method: str, target: str) -> str:
    """The provider's URL for an origin-form ``target``; ``Refusal`` for anything else."""
    if not target.startswith("/") or target.startswith("//"):
        raise Refusal(400, "invalid_request", "only requests for a path are forwarded")
    path, _, query = target.partition("?")
    base = provider.base_url.rstrip("/")
    if provider.kind == "anthropic":
        allowed, suffix = (method, path) in ANTHROPIC_ROUTES, path
        expected = "Anthropic-style (/v1/messages)"
    else:
        suffix = path.removeprefix("/v1") if path.startswith("/v1/") else path
        allowed = (method, suffix) in OPENAI_ROUTES
        expected = "OpenAI-style (/v1/chat/completions, /v1/responses)"
    if not allowed:
        raise Refusal(
            404,
            "not_found",
            f"{method} {path} is not a model API route of provider {provider.name!r} "
            f"({provider.kind}): it takes {expected} requests. For the other kind, create "
            "the session with --provider naming a [providers.*] table of that kind",
        )
    return base + suffix + (f"?{query}" if query else "")


def _json(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _ask_for_usage(target: str, payload: dict[str, Any], body: bytes) -> bytes:
    """A streamed chat completion reports usage only when asked: ask (clients ignore the
    extra final chunk, which has no choices)."""
    if not target.split("?")[0].endswith("/chat/completions") or payload.get("stream") is not True:
        return body
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is not None:
        return body
    options = options if isinstance(options, dict) else {}
    return json.dumps({**payload, "stream_options": {**options, "include_usage": True}}).encode()


def _request_headers(
    raw: Iterable[tuple[bytes, bytes]], provider: ProviderConfig
) -> dict[str, str]:
    headers = {
        k.decode("latin-1").lower(): v.decode("latin-1")
        for k, v in raw
        if k.decode("latin-1").lower() in PASSED_REQUEST
    }
    headers["accept-encoding"] = "identity"
    key = provider.api_key.get_secret_value()
    if provider.kind == "anthropic":
        headers["x-api-key"] = key
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    else:
        headers["authorization"] = f"Bearer {key}"
    return headers


async def _forward(
    conn: h11.Connection,
    stream: anyio.abc.ByteStream,
    client: httpx.AsyncClient,
    call: tuple[str, str, dict[str, str], bytes],
    provider: ProviderConfig,
    model: str | None,
    gate: SessionGate,
) -> None:
    method, url, headers, body = call
    where = url.split("?")[0]
    timeout = httpx.Timeout(provider.timeout_s, connect=min(provider.timeout_s, 15.0))
    try:
        upstream = await client.send(
            client.build_request(method, url, headers=headers, content=body, timeout=timeout),
            stream=True,
        )
    except httpx.HTTPError as exc:
        why = f"the model provider at {provider.base_url} did not answer: {exc!r}"
        await gate.record(Call(method, where, model, 502, None, None, "error", why))
        await _refuse(conn, stream, Refusal(502, "upstream_unreachable", why), anthropic=False)
        return
    meter, whole = StreamMeter(), bytearray()
    sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
    try:
        async with anyio.create_task_group() as tg:
            # An agent that hangs up mid-answer ends the provider's call at once, not when
            # the provider next has words for nobody.
            tg.start_soon(_until_agent_leaves, conn, stream, tg.cancel_scope)
            head = _response_headers(upstream.headers)
            await _send(conn, stream, h11.Response(status_code=upstream.status_code, headers=head))
            async for chunk in upstream.aiter_bytes():
                if sse:
                    meter.feed(chunk)
                elif len(whole) + len(chunk) <= MAX_PARSED:
                    whole += chunk
                await _send(conn, stream, h11.Data(data=chunk))
            await _send(conn, stream, h11.EndOfMessage())
            tg.cancel_scope.cancel()  # answered: stop watching
    finally:
        # Also when the agent hung up mid-answer: what was generated is paid for.
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
            usage = meter.usage() if sse else usage_of(_json(bytes(whole)))
            cost = PriceTable(provider.prices).estimate(model, usage) if model else None
            ok = upstream.status_code < 400
            await gate.record(
                Call(method, where, model, upstream.status_code, usage, cost,
                     "allowed" if ok else "error")
            )  # fmt: skip


async def _until_agent_leaves(
    conn: h11.Connection, stream: anyio.abc.ByteStream, answer: anyio.CancelScope
) -> None:
    """Bytes the agent sends meanwhile are its next request, kept for h11 (up to a body's
    worth); its hanging up, or sending more than that, ends the answer."""
    kept = 0
    try:
        while kept <= MAX_BODY + MAX_HEAD:
            data = await stream.receive()
            kept += len(data)
            conn.receive_data(data)
    except (anyio.EndOfStream, *_CLIENT_GONE):
        pass
    answer.cancel()


def _response_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    return [
        (k, v) for k, v in headers.items() if k in PASSED_RESPONSE or k.startswith(PASSED_PREFIXES)
    ]


async def _refuse(
    conn: h11.Connection, stream: anyio.abc.ByteStream, refusal: Refusal, *, anthropic: bool
) -> None:
    """An error in the dialect the agent speaks, so its CLI shows the message."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # an answer is already under way: all that is left is to close
    error = {"type": refusal.kind, "message": f"hivecell model proxy: {refusal.message}"}
    payload = {"type": "error", "error": error} if anthropic else {"error": error}
    data = json.dumps(payload).encode()
    head = [
        ("content-type", "application/json"),
        ("content-length", str(len(data))),
        ("x-hivecell-proxy", "refused"),
    ]
    await _send(conn, stream, h11.Response(status_code=refusal.status, headers=head))
    await _send(conn, stream, h11.Data(data=data))
    await _send(conn, stream, h11.EndOfMessage())


async def _send(conn: h11.Connection, stream: anyio.abc.ByteStream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send(data)
