"""A web page or a rebinding domain tries to drive the server: Host, Origin, Sec-Fetch-Site,
content types, body sizes, the API docs and the cookie. Real uvicorn on loopback, requests as
a browser would send them (token in the cookie), with and without --no-auth."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx2
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.security.conftest_server import TOKEN, Server, serve_config

pytestmark = pytest.mark.anyio
AUTH_MODES = [TOKEN, None]  # token in a cookie, and --no-auth


def other_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def foreign_origins(server: Server) -> list[str]:
    return [
        f"http://127.0.0.1:{other_port()}",  # another localhost port: same-site, cross-origin
        f"http://localhost:{server.port}",  # another name for the same socket is another origin
        f"https://127.0.0.1:{server.port}",
        "http://evil.example",
        "null",  # sandboxed iframes, file: pages, some redirects
    ]


def code(response: httpx2.Response) -> str:
    return str(response.json()["error"]["code"])


@pytest.mark.parametrize("token", AUTH_MODES, ids=["cookie", "no-auth"])
async def test_foreign_origins_cannot_change_anything(home: Path, token: str | None) -> None:
    async with serve_config(home, token=token) as server, server.client() as browser:
        task = {"description": "exfiltrate", "network": "nat"}
        settings = {"max_concurrent": 9}
        for origin in foreign_origins(server):
            headers = {"Origin": origin}
            attempts = [
                await browser.post("/api/v1/tasks", json=task, headers=headers),
                await browser.post("/api/v1/stop-all", headers=headers),
                await browser.post("/api/v1/tasks/t-x/approve", headers=headers),
                await browser.put("/api/v1/settings", json=settings, headers=headers),
                await browser.delete("/api/v1/sandboxes/sb-x", headers=headers),
            ]
            for response in attempts:
                assert response.status_code == 403, (origin, response.request.url, response.text)
                assert code(response) == "forbidden_origin"
        # Nothing happened: no task, settings unchanged.
        assert (await browser.get("/api/v1/tasks")).json()["total"] == 0
        assert (await browser.get("/api/v1/settings")).json()["max_concurrent"] == 2
        # The server's own pages, and clients without an Origin (curl, SDK, CLI), still work.
        own = await browser.put(
            "/api/v1/settings", json=settings, headers={"Origin": server.origin}
        )
        assert own.status_code == 200, own.text
        plain = await browser.put("/api/v1/settings", json={"max_concurrent": 3})
        assert plain.status_code == 200, plain.text


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_fetch_metadata_from_another_site_is_refused(home: Path, site: str) -> None:
    async with serve_config(home, token=None) as server, server.client() as browser:
        response = await browser.post("/api/v1/stop-all", headers={"Sec-Fetch-Site": site})
        assert response.status_code == 403 and code(response) == "forbidden_origin"
        ok = await browser.post("/api/v1/stop-all", headers={"Sec-Fetch-Site": "same-origin"})
        assert ok.status_code == 200 and ok.json() == {"stopped": []}


@pytest.mark.parametrize("token", AUTH_MODES, ids=["cookie", "no-auth"])
async def test_websockets_from_foreign_origins_are_refused(home: Path, token: str | None) -> None:
    async with serve_config(home, token=token) as server:
        headers = {"Cookie": f"hivecell_token={token}"} if token else {}
        url = server.ws_base + "/api/v1/events"
        for origin in foreign_origins(server):
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(url, origin=origin, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403, origin
        for origin in (server.origin, None):  # the dashboard itself, and a non-browser client
            async with websockets.connect(url, origin=origin, additional_headers=headers) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"


@pytest.mark.parametrize("token", AUTH_MODES, ids=["token", "no-auth"])
async def test_dns_rebinding_hosts_are_refused(home: Path, token: str | None) -> None:
    """A page on evil.example whose name now resolves to 127.0.0.1 is same-origin with itself:
    only the Host header tells the server the request was not meant for it."""
    async with serve_config(home, token=token, ui=True) as server, server.client() as browser:
        evil = {"Host": f"evil.example:{server.port}"}
        paths = [("GET", "/api/v1/tasks"), ("POST", "/api/v1/stop-all"), ("GET", "/"),
                 ("GET", "/login"), ("GET", "/static/vendor/novnc/core/rfb.js")]  # fmt: skip
        for method, path in paths:
            response = await browser.request(method, path, headers=evil)
            assert response.status_code == 400, (path, response.text)
            assert code(response) == "host_not_allowed"
            assert "--allowed-host" in response.json()["error"]["message"]
        # The socket is ours, the URL (and so the Host header) the rebinding page's.
        rebound = f"ws://evil.example:{server.port}/api/v1/events"
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(
                rebound, host="127.0.0.1", port=server.port, additional_headers=_cookie(token)
            ):
                pass
        assert refused.value.response.status_code == 400
        for host in (
            f"localhost:{server.port}",
            f"127.0.0.1:{server.port}",
            f"[::1]:{server.port}",
        ):
            response = await browser.get("/api/v1/status", headers={"Host": host})
            assert response.status_code == 200, (host, response.text)


async def test_allowed_host_admits_a_reverse_proxy_name(home: Path) -> None:
    proxy = frozenset({"hive.example"})
    async with serve_config(home, allowed_hosts=proxy) as server, server.client() as browser:
        proxied = {"Host": "hive.example", "Origin": "http://hive.example"}
        response = await browser.post("/api/v1/stop-all", headers=proxied)
        assert response.status_code == 200, response.text
        other = {"Host": "hive.example", "Origin": "http://evil.example"}
        assert (await browser.post("/api/v1/stop-all", headers=other)).status_code == 403
        rebound = {"Host": "other.example"}
        assert (await browser.get("/api/v1/status", headers=rebound)).status_code == 400


async def test_json_routes_refuse_other_content_types(home: Path) -> None:
    """text/plain is what a cross-origin form or no-CORS fetch can send without a preflight."""
    async with serve_config(home) as server, server.client() as browser:
        text = {"Content-Type": "text/plain"}
        body = json.dumps({"description": "x", "network": "nat"})
        for method, path in [("POST", "/api/v1/tasks"), ("PUT", "/api/v1/settings"),
                             ("POST", "/api/v1/providers"), ("POST", "/api/v1/tasks/t-x/instruct"),
                             ("POST", "/api/v1/sandboxes")]:  # fmt: skip
            response = await browser.request(method, path, content=body, headers=text)
            assert response.status_code == 415, (path, response.text)
            assert "application/json" in response.json()["error"]["message"]
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        response = await browser.post("/api/v1/tasks", content=b"description=x", headers=form)
        assert response.status_code == 415
        assert "multipart/form-data" in response.json()["error"]["message"]
        assert (await browser.get("/api/v1/tasks")).json()["total"] == 0
        # Body-less control POSTs need no type: they reach the route (unknown task: 404).
        assert (await browser.post("/api/v1/tasks/t-x/pause")).status_code == 404
        assert (await browser.post("/api/v1/tasks/t-x/pause", headers=text)).status_code == 404


async def test_json_bodies_are_capped(home: Path) -> None:
    async with serve_config(home, max_json_bytes=64 * 1024) as server, server.client() as browser:
        big = {"description": "x" * 200_000}
        response = await browser.post("/api/v1/tasks", json=big)
        assert response.status_code == 413 and code(response) == "too_large"

        async def chunks() -> object:  # no Content-Length: the cap counts what streams in
            for _ in range(64):
                yield b" " * 4096

        streamed = await browser.put(
            "/api/v1/settings", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text
        assert (
            await browser.put("/api/v1/settings", json={"max_concurrent": 3})
        ).status_code == 200


async def test_api_docs_need_the_token_and_load_nothing_from_elsewhere(home: Path) -> None:
    async with serve_config(home, ui=True) as server:
        async with httpx2.AsyncClient(base_url=server.base_url) as anonymous:
            for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
                response = await anonymous.get(path)
                assert response.status_code in (401, 404), (path, response.status_code)
                assert response.status_code == 401 or path == "/docs/oauth2-redirect"
        async with server.client() as browser:
            schema = await browser.get("/openapi.json")
            assert schema.status_code == 200 and "/api/v1/tasks" in schema.json()["paths"]
            pages = ["/", "/login", "/settings", "/environments", "/tasks/t-x", "/crews",
                     "/crews/c-x", "/docs", "/redoc"]  # fmt: skip
            for path in pages:
                response = await browser.get(path, follow_redirects=True)
                assert response.status_code == 200, path
                assert not _external_urls(response.text), (path, _external_urls(response.text))


def _external_urls(html: str) -> list[str]:
    """Every src/href/@import pointing off this server (a CDN would be one)."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", html, re.I)
    return found + re.findall(r"@import\s+url\(\s*['\"]?(?:https?:)?//", html, re.I)


async def test_cookie_is_httponly_strict_and_secure_under_tls(home: Path) -> None:
    async with serve_config(home) as server, server.client() as browser:
        plain = await browser.get(f"/api/v1/status?token={TOKEN}")
        cookie = plain.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
        # A TLS proxy on loopback (uvicorn trusts its X-Forwarded-Proto) serves https.
        tls = {"X-Forwarded-Proto": "https"}
        proxied = await browser.get(f"/api/v1/status?token={TOKEN}", headers=tls)
        cookie = proxied.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert re.search(r";\s*secure(;|$)", cookie), cookie


def _cookie(token: str | None) -> dict[str, str]:
    return {"Cookie": f"hivecell_token={token}"} if token else {}
