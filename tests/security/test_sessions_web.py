"""The web terminal's perimeter, as a browser would meet it: the token in the cookie, Origins
of other pages, a wrong cookie, and the Sessions page's own headers. Real uvicorn with the
dashboard installed, a real bash behind its supervisor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hivecell.sessions import framing
from hivecell.sessions.framing import FrameType
from tests.security.conftest_server import TOKEN, serve_config
from tests.security.test_server_perimeter import foreign_origins
from tests.sessions.helpers import make_repo, stop_all

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def shome(home: Path) -> Iterator[Path]:
    yield home
    stop_all(home)


async def test_attach_with_the_cookie_only_from_the_dashboards_origin(
    shome: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    async with serve_config(shome, ui=True) as server, server.client() as browser:
        body = {"name": "wa1", "agent": "shell", "repo": str(repo), "isolation": "none"}
        made = await browser.post("/api/v1/sessions", json=body, headers={"Origin": server.origin})
        assert made.status_code == 201, made.text
        url = server.ws_base + "/api/v1/sessions/wa1/attach"
        cookie = {"Cookie": f"hivecell_token={TOKEN}"}
        for origin in foreign_origins(server):
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(url, origin=origin, additional_headers=cookie):
                    pass
            assert refused.value.response.status_code == 403, origin
        for headers in ({}, {"Cookie": "hivecell_token=wrong-token"}):
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(
                    url, origin=server.origin, additional_headers=headers
                ):
                    pass
            assert refused.value.response.status_code in (401, 403), headers
        # The dashboard's own origin with the cookie gets the terminal.
        async with websockets.connect(url, origin=server.origin, additional_headers=cookie) as ws:
            await ws.send(framing.encode(FrameType.STDIN, b"echo web-$((40+2))\r"))
            seen = b""
            with anyio.fail_after(20):
                while b"web-42" not in seen:
                    frame = framing.decode(await ws.recv())
                    if frame.type is FrameType.STDOUT:
                        seen += frame.payload
        # The events socket carries session.status to the same origin only (the rule is the
        # server's perimeter, checked here for the new event's socket as well).
        events = server.ws_base + "/api/v1/events"
        with pytest.raises(InvalidStatus):
            async with websockets.connect(
                events, origin="http://evil.example", additional_headers=cookie
            ):
                pass
        async with websockets.connect(
            events, origin=server.origin, additional_headers=cookie
        ) as ev:
            assert "session.status" in json.loads(await ev.recv())["data"]["types"]


async def test_the_sessions_page_needs_the_token_and_keeps_scripts_to_self(home: Path) -> None:
    async with serve_config(home, ui=True) as server:
        async with server.client() as browser:
            page = await browser.get("/sessions")
            assert page.status_code == 200 and 'data-page="sessions"' in page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self';" in csp and "connect-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            # Other pages keep the strict style rule.
            assert (
                "unsafe-inline" not in (await browser.get("/")).headers["content-security-policy"]
            )
        wrong = {"hivecell_token": "wrong"}
        async with httpx2.AsyncClient(base_url=server.base_url, cookies=wrong) as stranger:
            refused = await stranger.get("/sessions")
            assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
