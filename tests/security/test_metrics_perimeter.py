"""What the metrics routes tell, and to whom: /metrics and /sandboxes/{id}/stats answer only
the token, never a rebinding page, and a stats id cannot leave the sandboxes folder."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.security.conftest_server import TOKEN, serve_config

pytestmark = pytest.mark.anyio
STATS_PATHS = ["/metrics", "/api/v1/sandboxes/sb-00000000/stats"]


async def test_metrics_answer_only_the_token(home: Path) -> None:
    async with serve_config(home, ui=True) as server, server.client() as browser:
        async with httpx2.AsyncClient(base_url=server.base_url) as anonymous:
            for path in STATS_PATHS:
                assert (await anonymous.get(path)).status_code == 401, path
                wrong = {"Cookie": "hivecell_token=" + TOKEN[:-1] + "x"}
                assert (await anonymous.get(path, headers=wrong)).status_code == 401, path
                bearer = {"Authorization": "Bearer " + TOKEN.upper()}
                assert (await anonymous.get(path, headers=bearer)).status_code == 401, path
        scraped = await browser.get("/metrics")
        assert scraped.status_code == 200 and "hivecell_tasks" in scraped.text
        assert scraped.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-auth"])
async def test_a_rebinding_page_cannot_read_the_metrics(home: Path, token: str | None) -> None:
    """With --no-auth only the Host header keeps a rebound evil.example from reading them."""
    async with serve_config(home, token=token) as server, server.client() as browser:
        evil = {"Host": f"evil.example:{server.port}"}
        for path in STATS_PATHS:
            response = await browser.get(path, headers=evil)
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["code"] == "host_not_allowed"


async def test_stats_ids_cannot_name_other_paths(home: Path) -> None:
    async with serve_config(home) as server, server.client() as browser:
        for sandbox_id in ("..", "..%2F..%2Fetc", "%2E%2E", "sb-x%00", "a" * 200, "-rf"):
            response = await browser.get(f"/api/v1/sandboxes/{sandbox_id}/stats")
            assert response.status_code == 404, (sandbox_id, response.text)
