"""``/mcp`` is behind the API's perimeter: no token, a wrong token, a foreign Origin (reads
included: its GET is an event stream with tool results) or a Host that is not the server's
is refused before the MCP transport sees the request, and nothing is created."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from hivecell.sandbox.local.provider import LocalProvider
from tests.security.conftest_server import TOKEN, serve_config
from tests.security.test_server_perimeter import foreign_origins

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **MCP_HEADERS}


async def post(http: httpx2.AsyncClient, headers: dict[str, str]) -> httpx2.Response:
    return await http.post("/mcp", json=INITIALIZE, headers=headers)


async def test_only_the_token_opens_an_mcp_session(home: Path) -> None:
    async with serve_config(home) as server, httpx2.AsyncClient(base_url=server.base_url) as http:
        for headers in (MCP_HEADERS, bearer("wrong-token"), {"Authorization": TOKEN}):
            refused = await post(http, headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "unauthenticated"
            assert "mcp-session-id" not in refused.headers
        stream = await http.get("/mcp", headers=MCP_HEADERS)
        assert stream.status_code == 401
        # The SDK's client without the token cannot connect at all.
        with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises for a 401
            transport = streamable_http_client(server.base_url + "/mcp")
            async with Client(transport, read_timeout_seconds=30) as client:
                await client.call_tool("sandbox_create", {})
        # The positive control: the same request with the token is served.
        served = await post(http, bearer(TOKEN))
        assert served.status_code == 200, served.text
    assert await LocalProvider(home).list() == []


async def test_a_foreign_origin_is_refused_even_with_the_token(home: Path) -> None:
    async with (
        serve_config(home) as server,
        httpx2.AsyncClient(base_url=server.base_url) as http,
        server.client() as browser,  # the token in the login cookie
    ):
        for origin in foreign_origins(server):
            for client, headers in ((http, bearer(TOKEN)), (browser, MCP_HEADERS)):
                headers = headers | {"Origin": origin}
                refused = await post(client, headers)
                assert refused.status_code == 403, (origin, refused.text)
                assert refused.json()["error"]["code"] == "forbidden_origin"
                stream = await client.get("/mcp", headers=headers)
                assert stream.status_code == 403, (origin, stream.text)
        fetch = bearer(TOKEN) | {"Sec-Fetch-Site": "same-site"}
        assert (await post(http, fetch)).status_code == 403
        own = await post(http, bearer(TOKEN) | {"Origin": server.origin})
        assert own.status_code == 200, own.text


async def test_a_host_that_is_not_the_servers_is_refused(home: Path) -> None:
    async with serve_config(home) as server, httpx2.AsyncClient(base_url=server.base_url) as http:
        for host in ("evil.example", f"rebind.example:{server.port}", ""):
            refused = await post(http, bearer(TOKEN) | {"Host": host})
            assert refused.status_code == 400, (host, refused.text)
            assert "mcp-session-id" not in refused.headers
        assert (await post(http, bearer(TOKEN) | {"Host": f"localhost:{server.port}"})).is_success
