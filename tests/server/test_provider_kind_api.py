"""``kind`` in the providers API: saved to config.toml, listed, and used by the test call."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hivecell.agent.llm.scripted_claude import ClaudeReply, ScriptedClaudeServer
from tests.server.helpers import serve

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]


async def test_an_anthropic_provider_is_saved_listed_and_tested_over_the_messages_api(
    home: Path,
) -> None:
    async with ScriptedClaudeServer([ClaudeReply(text="ok")]) as claude, serve(home) as running:
        body = {
            "name": "claude",
            "kind": "anthropic",
            "base_url": claude.base_url,
            "model": "claude-sonnet-4-5",
            "api_key": "sk-ant-secret-4321",
        }
        saved = await running.post("/providers", json=body)
        assert saved.status_code == 201, saved.text
        assert saved.json()["kind"] == "anthropic"
        plain = body | {"name": "plain", "base_url": "http://127.0.0.1:9/v1", "kind": None}
        assert (await running.post("/providers", json=plain)).status_code == 201
        listing = {p["name"]: p for p in (await running.get("/providers")).json()["items"]}
        assert listing["plain"]["kind"] == "openai-chat"
        tested = (await running.post("/providers/claude/test")).json()
        assert tested["ok"] is True and tested["reply"] == "ok", tested
        bad = await running.post("/providers", json=body | {"kind": "gemini"})
        assert bad.status_code == 422
    [request] = claude.message_requests
    assert request.body["model"] == "claude-sonnet-4-5"
    table = tomllib.loads((home / "config.toml").read_text())["providers"]
    assert table["claude"]["kind"] == "anthropic" and "kind" not in table["plain"]
