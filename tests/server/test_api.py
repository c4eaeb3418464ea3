"""The API without sandboxes: auth on every route, the error shape, providers and settings."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets

from hivecell.agent.llm.script import Failure, Reply
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.server.auth import load_or_create_token
from tests.server.helpers import TOKEN, serve, write_provider

pytestmark = pytest.mark.anyio

ROUTES = [
    ("POST", "/tasks"),
    ("GET", "/tasks"),
    ("GET", "/tasks/t-x"),
    ("POST", "/tasks/t-x/pause"),
    ("POST", "/tasks/t-x/resume"),
    ("POST", "/tasks/t-x/cancel"),
    ("POST", "/tasks/t-x/takeover"),
    ("POST", "/tasks/t-x/handback"),
    ("POST", "/tasks/t-x/instruct"),
    ("POST", "/tasks/t-x/answer"),
    ("POST", "/tasks/t-x/approve"),
    ("POST", "/tasks/t-x/deny"),
    ("GET", "/tasks/t-x/trace"),
    ("GET", "/tasks/t-x/network"),
    ("GET", "/tasks/t-x/screenshots/s.png"),
    ("GET", "/tasks/t-x/artifacts"),
    ("GET", "/tasks/t-x/artifacts/a.txt"),
    ("GET", "/tasks/t-x/export"),
    ("GET", "/sandboxes"),
    ("POST", "/sandboxes"),
    ("GET", "/sandboxes/sb-x"),
    ("DELETE", "/sandboxes/sb-x"),
    ("GET", "/sandboxes/sb-x/screenshot"),
    ("GET", "/sandboxes/sb-x/network"),
    ("GET", "/sandboxes/sb-x/stats"),
    ("GET", "/pool"),
    ("GET", "/providers"),
    ("POST", "/providers"),
    ("DELETE", "/providers/p"),
    ("POST", "/providers/p/test"),
    ("POST", "/stop-all"),
    ("GET", "/settings"),
    ("PUT", "/settings"),
    ("GET", "/status"),
]


def error(response: httpx2.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"code", "message", "op", "context", "retryable"}
    return dict(body["error"])


async def test_every_route_needs_the_token(home: Path) -> None:
    async with serve(home) as running:
        async with httpx2.AsyncClient(base_url=running.base_url) as anonymous:
            for method, path in ROUTES:
                response = await anonymous.request(method, "/api/v1" + path)
                assert response.status_code == 401, (method, path, response.text)
                assert error(response)["code"] == "unauthenticated"
            wrong = {"Authorization": "Bearer nope"}
            assert (await anonymous.get("/api/v1/tasks", headers=wrong)).status_code == 401
        for method, path in [("GET", "/tasks"), ("GET", "/sandboxes"), ("GET", "/settings")]:
            assert (await running.client.request(method, "/api/v1" + path)).status_code == 200


async def test_the_token_link_sets_a_cookie_and_drops_the_token(home: Path) -> None:
    async with serve(home) as running, httpx2.AsyncClient(base_url=running.base_url) as browser:
        response = await browser.get(f"/api/v1/tasks?limit=5&token={TOKEN}")
        assert response.status_code == 303
        assert response.headers["location"] == "/api/v1/tasks?limit=5"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert (await browser.get("/api/v1/tasks")).status_code == 200  # the cookie now
        assert (await browser.get("/?token=wrong")).status_code != 303


async def test_websockets_need_the_token_too(home: Path) -> None:
    async with serve(home) as running:
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(running.ws_url):
                pass
        async with websockets.connect(f"{running.ws_url}?token={TOKEN}") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
        cookie = {"Cookie": f"hivecell_token={TOKEN}"}
        async with websockets.connect(running.ws_url, additional_headers=cookie) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"


async def test_bad_input_names_the_field(home: Path) -> None:
    async with serve(home) as running:
        cases = [
            ({"description": ""}, "description"),
            ({"description": "x", "max_steps": 0}, "max_steps"),
            ({"description": "x", "network": "wifi"}, "network"),
            ({"description": "x", "surprise": 1}, "surprise"),
            ({"description": "x", "disabled_tools": ["teleport"]}, "disabled_tools"),
        ]
        for body, field in cases:
            response = await running.post("/tasks", json=body)
            assert response.status_code == 422, response.text
            problem = error(response)
            assert problem["code"] == "invalid_params" and field in problem["message"]
        json_type = {"Content-Type": "application/json"}
        response = await running.post("/tasks", content=b"not json", headers=json_type)
        assert response.status_code == 422 and "body" in error(response)["message"]
        response = await running.get("/tasks", params={"limit": 0})
        assert response.status_code == 422 and "limit" in error(response)["message"]
        response = await running.get("/tasks", params={"status": "sleeping"})
        assert response.status_code == 422 and "status" in error(response)["message"]
        response = await running.post("/tasks/t-x/instruct", json={"text": ""})
        assert response.status_code == 422 and "text" in error(response)["message"]


async def test_unknown_things_are_404_and_unknown_providers_400(home: Path) -> None:
    async with serve(home) as running:
        for path in ["/tasks/t-nope", "/tasks/t-nope/trace", "/sandboxes/sb-nope"]:
            response = await running.get(path)
            assert response.status_code == 404, (path, response.text)
        assert error(await running.post("/tasks/t-nope/pause"))["code"] == "task_not_found"
        response = await running.post("/tasks", json={"description": "x", "provider": "nope"})
        assert response.status_code == 400
        assert "[providers.nope]" in error(response)["message"]
        response = await running.client.delete("/api/v1/sandboxes/..%2F..%2Fetc")
        assert response.status_code == 404


async def test_providers_are_saved_masked_and_tested_for_real(home: Path) -> None:
    script = [Reply(text="ok"), Failure(status=401, message="bad key")]
    async with ScriptedLLMServer(script) as llm, serve(home) as running:
        body = {
            "name": "lab",
            "base_url": llm.base_url,
            "model": "m1",
            "api_key": "sk-very-secret-9876",
            "default": True,
        }
        response = await running.post("/providers", json=body)
        assert response.status_code == 201, response.text
        saved = response.json()
        assert saved["api_key"] == "…9876" and saved["default"] is True
        listing = (await running.get("/providers")).json()
        assert "sk-very-secret" not in json.dumps(listing)
        assert listing["default"] == "lab"
        edited = await running.post("/providers", json=body | {"model": "m2", "api_key": None})
        assert edited.json()["api_key"] == "…9876" and edited.json()["model"] == "m2"
        good = (await running.post("/providers/lab/test")).json()
        assert good["ok"] is True and good["latency_ms"] > 0 and good["reply"] == "ok"
        bad = (await running.post("/providers/lab/test")).json()
        assert bad["ok"] is False and bad["error"]["code"] == "llm_rejected"
        assert llm.chat_requests[0]["model"] == "m2"
        assert (await running.client.delete("/api/v1/providers/lab")).status_code == 204
        assert (await running.client.delete("/api/v1/providers/lab")).status_code == 404
        bad_url = await running.post("/providers", json=body | {"base_url": "ftp://x"})
        assert bad_url.status_code == 422 and "base_url" in error(bad_url)["message"]
    mode = stat.S_IMODE((home / "config.toml").stat().st_mode)
    assert mode == 0o600


async def test_settings_are_merged_saved_and_validated(home: Path) -> None:
    async with serve(home) as running:
        defaults = (await running.get("/settings")).json()
        assert defaults["max_concurrent"] == 2 and defaults["task"]["max_steps"] == 100
        changes = {"max_concurrent": 3, "task": {"max_steps": 7}, "output_dir": "/tmp/out"}
        response = await running.client.put("/api/v1/settings", json=changes)
        assert response.status_code == 200, response.text
        task = response.json()["task"]
        assert task == {
            "max_steps": 7,
            "timeout_s": 1800.0,
            "limits_final": False,
            "max_cost_usd": None,
            "max_tokens": None,
        }
        bad = await running.client.put("/api/v1/settings", json={"max_concurrent": 0})
        assert bad.status_code == 422 and "max_concurrent" in error(bad)["message"]
        for name in ("", "a\nb = 1\n[server]", "x" * 201):  # no TOML injection, no junk
            junk = {"prices": {name: {"input": 1, "output": 1}}}
            refused = await running.client.put("/api/v1/settings", json=junk)
            assert refused.status_code == 422, (name, refused.text)
        odd = {"prices": {'we"ird]. [model': {"input": 1, "output": 2}}}
        assert (await running.client.put("/api/v1/settings", json=odd)).status_code == 200
    async with serve(home) as running:  # persisted in config.toml
        again = (await running.get("/settings")).json()
        assert again["max_concurrent"] == 3 and again["output_dir"] == "/tmp/out"
        assert again["prices"] == {
            'we"ird]. [model': {"input": 1, "output": 2, "cached_input": None}
        }
    assert "[server]" in (home / "config.toml").read_text()


async def test_a_task_without_any_model_configured_is_refused(home: Path) -> None:
    async with serve(home) as running:
        response = await running.post("/tasks", json={"description": "x"})
        assert response.status_code == 400
        assert "OPENAI_API_KEY" in error(response)["message"]


def test_the_token_is_created_once_and_private(home: Path) -> None:
    first = load_or_create_token(home)
    assert load_or_create_token(home) == first and len(first) >= 32
    assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600


async def test_openapi_lists_the_contract(home: Path) -> None:
    write_provider(home, "http://127.0.0.1:9/v1")
    async with serve(home) as running:
        paths = (await running.client.get("/openapi.json")).json()["paths"]
        for path in ["/api/v1/tasks", "/api/v1/tasks/{task_id}/export", "/api/v1/stop-all"]:
            assert path in paths
