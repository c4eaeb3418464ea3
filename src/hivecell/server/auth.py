"""Who may talk to the server: one shared token, sent as a bearer header or a cookie.

The browser gets the cookie from the ``?token=`` link ``hivecell up`` prints: the middleware
sets it (HttpOnly, SameSite=Strict, and Secure when the request came over https: uvicorn takes
that from ``X-Forwarded-Proto`` of proxies in ``--forwarded-allow-ips``, loopback by default)
and redirects to the same URL without the token, so the
secret does not linger in the address bar or the history.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from fastapi import Request
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from hivecell.errors import Unauthenticated

COOKIE = "hivecell_token"
TOKEN_FILE = "token"


def load_or_create_token(home: Path) -> str:
    """The token in ``home/token``, created (0600) on first start and reused afterwards."""
    path = home / TOKEN_FILE
    home.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if token:
            return token
        path.unlink()
        return load_or_create_token(home)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a request carries: bearer header, then cookie, then (WebSockets) ``?token=``."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if conn.cookies.get(COOKIE):
        return conn.cookies[COOKIE]
    if conn.scope["type"] == "websocket":
        return conn.query_params.get("token")
    return None


def check(conn: HTTPConnection, token: str | None) -> None:
    """Raise ``Unauthenticated`` unless the request carries ``token`` (None: auth is off)."""
    if token is None:
        return
    given = presented_token(conn)
    if given is None or not secrets.compare_digest(given.encode(), token.encode()):
        raise Unauthenticated(
            "missing or wrong token: send 'Authorization: Bearer <token>' (the token is in "
            "$HIVECELL_HOME/token) or open the link 'hivecell up' printed",
            op="auth",
        )


class TokenLinkMiddleware:
    """``GET any-page?token=T`` with the right T: set the cookie, redirect without the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            await self.app(scope, receive, send)
            return
        await self._redirect(request)(scope, receive, send)

    def _redirect(self, request: Request) -> RedirectResponse:
        query = [(k, v) for k, v in parse_qsl(request.url.query) if k != "token"]
        target = request.url.path + (f"?{urlencode(query)}" if query else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            self.token or "",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",  # https directly or via a trusted proxy
            path="/",
            max_age=60 * 60 * 24 * 365,
        )
        return response
