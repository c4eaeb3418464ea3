"""What a request must look like before any route sees it: the browser-facing perimeter.

One ASGI middleware, outermost, for HTTP and WebSockets alike:

1. **Host allowlist** (400): the bound address, the loopback names and ``--allowed-host``
   names. A DNS-rebinding page reaches the server under its own domain name, so a Host that
   is not ours is refused. Bound to a wildcard address (0.0.0.0, ::), any IP literal is
   accepted as well: rebinding always arrives with a name, never with an IP literal.
2. **Origin** (403) on every state-changing request and every WebSocket: no Origin header is
   fine (curl, the SDK, the CLI: no browser, no ambient cookie); a present Origin must be this
   server's own origin (scheme, Host, port), so ``null`` and other localhost ports (same-site
   but cross-origin) are refused. ``Sec-Fetch-Site: cross-site | same-site`` is refused too.
3. **Content type** (415): a state-changing request with a body sends JSON (or multipart to
   the upload route); ``text/plain`` is what a cross-origin "simple request" would send.
   Body-less control POSTs (``POST /tasks/{id}/pause``) need no type.
4. **Body size** (413): JSON bodies and uploads are counted while they stream in, and the
   request is refused the moment it passes its cap, before it is held anywhere.

The scheme is the request's as uvicorn saw it: behind a TLS proxy that uvicorn trusts
(``--forwarded-allow-ips``, loopback by default), ``X-Forwarded-Proto: https`` makes it https.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hivecell.server.errors import error_body

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_LIMIT = 1024 * 1024
UPLOAD_LIMIT = 200 * 1024 * 1024
UPLOAD_SLACK = 1024 * 1024  # the multipart framing and form fields around the files
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes its cap; every layer maps it to 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


@dataclass(frozen=True)
class GuardPolicy:
    bind_host: str = "127.0.0.1"
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # --allowed-host names
    json_limit: int = JSON_LIMIT
    upload_limit: int = UPLOAD_LIMIT  # bytes of files in one upload
    upload_paths: frozenset[str] = frozenset({"/api/v1/tasks"})

    def host_allowed(self, hostname: str) -> bool:
        names = LOOPBACK_NAMES | {_bare(self.bind_host)} | {_bare(h) for h in self.allowed_hosts}
        if hostname in names:
            return True
        return self.bind_host in WILDCARD_BINDS and _is_ip(hostname)


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


class RequestGuard:
    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = check(scope, self.policy)
        if refusal is not None:
            await _refuse(scope, receive, send, refusal)
            return
        if scope["type"] == "http":
            limit = body_limit(scope, self.policy)
            receive = _counting(receive, limit)
            send, started = _tracking(send)
            try:
                await self.app(scope, receive, send)
            except BodyTooLarge as exc:  # raised where no handler turned it into a response
                if started():
                    raise
                await _refuse(scope, receive, send, Refusal(413, "too_large", str(exc.detail)))
            return
        await self.app(scope, receive, send)


def check(scope: Scope, policy: GuardPolicy) -> Refusal | None:
    """The first rule ``scope`` breaks, or None."""
    headers = Headers(scope=scope)
    host = split_host(headers.get("host", ""))
    if host is None or not policy.host_allowed(host[0]):
        return Refusal(
            400,
            "host_not_allowed",
            f"Host {headers.get('host', '')!r} is not this server's: open it by the address it "
            "listens on or a loopback name, or start it with --allowed-host NAME",
        )
    changing = scope["type"] == "websocket" or scope["method"] in STATE_CHANGING
    if changing:
        refusal = _check_origin(scope, headers, host)
        if refusal is not None:
            return refusal
    if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
        return _check_body(scope, headers, policy)
    return None


def origin_refusal(scope: Scope, headers: Headers, host: tuple[str, int | None]) -> Refusal | None:
    """The Origin and Sec-Fetch-Site rule alone, for an endpoint that applies it to reads as
    well (``/mcp``: its GET is an event stream that carries tool results)."""
    return _check_origin(scope, headers, host)


def _check_origin(scope: Scope, headers: Headers, host: tuple[str, int | None]) -> Refusal | None:
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return Refusal(403, "forbidden_origin", f"refused a {site} request: open the dashboard "
                       "from this server's own address")  # fmt: skip
    origin = headers.get("origin")
    if origin is None:
        return None  # not a browser, or a same-origin GET: nothing ambient to abuse
    if _parse_origin(origin) != _own_origin(scope, host):
        return Refusal(
            403,
            "forbidden_origin",
            f"Origin {origin!r} is not this server's: only pages it serves may change state "
            "(a reverse proxy must pass the Host header through and set X-Forwarded-Proto)",
        )
    return None


def _check_body(scope: Scope, headers: Headers, policy: GuardPolicy) -> Refusal | None:
    length = headers.get("content-length")
    has_body = headers.get("transfer-encoding") is not None or (length not in (None, "0"))
    if not has_body:
        return None
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    allowed = ["application/json"]
    if scope["path"] in policy.upload_paths:
        allowed.append("multipart/form-data")
    if kind not in allowed:
        return Refusal(
            415,
            "unsupported_media_type",
            f"Content-Type {kind or 'none'!r} is not accepted here: send " + " or ".join(allowed),
        )
    limit = body_limit(scope, policy)
    if length is not None and (not length.isdigit() or int(length) > limit):
        return Refusal(413, "too_large", f"the request body exceeds {limit} bytes")
    return None


def body_limit(scope: Scope, policy: GuardPolicy) -> int:
    kind = Headers(scope=scope).get("content-type", "").lower()
    if scope["path"] in policy.upload_paths and kind.startswith("multipart/form-data"):
        return policy.upload_limit + UPLOAD_SLACK
    return policy.json_limit


def split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` or ``[v6]:port`` -> (lower-case host, port); None when malformed."""
    try:
        parts = urlsplit("//" + value)
        hostname, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not hostname or parts.path or parts.query or parts.fragment or parts.username:
        return None
    return hostname.lower(), port


def _own_origin(scope: Scope, host: tuple[str, int | None]) -> tuple[str, str, int | None]:
    given = str(scope.get("scheme", "http"))
    scheme = {"ws": "http", "wss": "https"}.get(given, given)
    return scheme, host[0], host[1] or _DEFAULT_PORTS.get(scheme)


def _parse_origin(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None  # "null", file:, chrome-extension: ...
    return parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme]


def _bare(host: str) -> str:
    return host.strip().strip("[]").lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


def _tracking(send: Send) -> tuple[Send, Any]:
    started = False

    async def tracked(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    return tracked, lambda: started


async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    body = _json(error_body(refusal.code, refusal.message, op="guard"))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if scope["type"] == "http":
        if refusal.status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        start = {"type": "websocket.http.response.start", "status": refusal.status}
        await send(start | {"headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def hosts_of(values: Iterable[str]) -> frozenset[str]:
    """``--allowed-host`` values as bare, lower-case names."""
    return frozenset(_bare(v) for v in values if v.strip())
