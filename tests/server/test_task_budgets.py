"""Budgets on the server: a cost budget needs a known price (never a silent $0), prices and
default budgets live in Settings (config.toml), and a task at its budget pauses and resumes
with more of what it used up."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish
from tests.server.helpers import Running, serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Every scripted reply uses 10 prompt + 5 completion tokens: 15 tokens, $0.015 at this price.
PRICE = {"input": 1000.0, "output": 1000.0}
WAITS = [act(call("wait", seconds=0)) for _ in range(4)]


def at_budget(task: dict[str, Any]) -> bool:
    return task["status"] == "paused" and task["limit"] == "budget_exceeded"


async def no_tasks(running: Running) -> None:
    listed = (await running.get("/tasks")).json()
    assert listed["total"] == 0, listed


async def test_a_cost_budget_without_a_price_is_refused(home: Path) -> None:
    async with ScriptedLLMServer(WAITS) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            body = {"description": "wait", "max_cost_usd": 0.5}
            refused = await running.post("/tasks", json=body)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert '[prices."scripted-model"]' in error["message"]
            assert "Settings" in error["message"] and "max_tokens" in error["message"]
            assert error["context"] == {"model": "scripted-model", "field": "max_cost_usd"}
            form = {"description": "wait", "max_cost_usd": "0.5"}
            files = {"files": ("a.txt", b"a", "text/plain")}
            multipart = await running.post("/tasks", data=form, files=files)
            assert multipart.status_code == 422, multipart.text
            # A default budget from Settings is held to the same rule.
            put = await running.client.put("/api/v1/settings", json={"task": {"max_cost_usd": 1}})
            assert put.status_code == 200, put.text
            default = await running.post("/tasks", json={"description": "wait"})
            assert default.status_code == 422, default.text
            await no_tasks(running)
            assert not (home / "inputs").exists() or not any((home / "inputs").iterdir())
            # A token budget needs no price.
            tokens = {"description": "wait", "max_tokens": 1000, "max_cost_usd": None}
            put = await running.client.put(
                "/api/v1/settings", json={"task": {"max_cost_usd": None}}
            )
            assert put.status_code == 200 and put.json()["task"]["max_cost_usd"] is None
            accepted = await running.post("/tasks", json=tokens)
            assert accepted.status_code == 201, accepted.text
            assert accepted.json()["budget"] == {"max_cost_usd": None, "max_tokens": 1000}


async def test_prices_from_settings_and_pausing_at_a_cost_budget(home: Path) -> None:
    async with ScriptedLLMServer([*WAITS, *finish("waited")]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            bad = {"prices": {"scripted-model": {"input": -1, "output": 1}}}
            assert (await running.client.put("/api/v1/settings", json=bad)).status_code == 422
            prices = {"prices": {"scripted-model": PRICE, "other-model": PRICE}}
            put = await running.client.put("/api/v1/settings", json=prices)
            assert put.status_code == 200, put.text
            saved = tomllib.loads((home / "config.toml").read_text())
            assert saved["prices"]["scripted-model"] == PRICE
            assert saved["providers"]["scripted"]["model"] == "scripted-model"  # kept
            drop = await running.client.put(
                "/api/v1/settings", json={"prices": {"other-model": None}}
            )
            assert list(drop.json()["prices"]) == ["scripted-model"]

            form = {"description": "wait a few times", "max_cost_usd": "0.02"}
            note = {"files": ("note.txt", b"wait", "text/plain")}
            created = await running.post("/tasks", data=form, files=note)  # multipart
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            paused = await running.wait_for(task_id, at_budget)
            assert "max_cost_usd" in paused["pause_reason"]
            assert paused["cost_usd"] == pytest.approx(0.03)  # two calls: over $0.02
            assert paused["budget"] == {"max_cost_usd": 0.02, "max_tokens": None}
            wrong = await running.post(f"/tasks/{task_id}/resume", json={"extra_tokens": 100})
            assert wrong.status_code == 422, wrong.text
            assert wrong.json()["error"]["context"]["field"] == "extra_cost_usd"
            more = await running.post(f"/tasks/{task_id}/resume", json={"extra_cost_usd": 1})
            assert more.status_code == 200, more.text
            done = await running.wait_for(task_id, lambda t: t["status"] == "completed")
            assert done["cost_usd"] == pytest.approx(0.015 * 6)  # four waits, reply, verdict
            # The record keeps the budget it ended with, the resume included.
            assert done["budget"] == {"max_cost_usd": 1.02, "max_tokens": None}


async def test_a_default_token_budget_pauses_and_needs_more_tokens(home: Path) -> None:
    async with ScriptedLLMServer([*WAITS, *finish("waited")]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            put = await running.client.put("/api/v1/settings", json={"task": {"max_tokens": 20}})
            assert put.status_code == 200, put.text
            created = await running.post("/tasks", json={"description": "wait a few times"})
            task_id = created.json()["id"]
            paused = await running.wait_for(task_id, at_budget)
            assert "max_tokens" in paused["pause_reason"]
            assert paused["budget"]["max_tokens"] == 20
            cost = await running.post(f"/tasks/{task_id}/resume", json={"extra_cost_usd": 1})
            assert cost.status_code == 422
            assert cost.json()["error"]["context"]["field"] == "extra_tokens"
            more = await running.post(f"/tasks/{task_id}/resume", json={"extra_tokens": 1000})
            assert more.status_code == 200, more.text
            resumed = await running.wait_for(task_id, lambda t: t["status"] != "paused")
            assert resumed["budget"]["max_tokens"] == 1020  # the running task's budget grew
            await running.wait_for(task_id, lambda t: t["status"] == "completed")
