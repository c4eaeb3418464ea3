"""The environment is a provider: ``hivecell up`` with OPENAI_* / HIVECELL_MODEL and no
config.toml lists it as the default, runs tasks on it and tests it, and never shows its key."""

from __future__ import annotations

import json
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from tests.server.browser.conftest import Hivecell, running_hivecell

pytestmark = pytest.mark.slow
KEY = "sk-env-key-987654"  # what the fixture exports as OPENAI_API_KEY


def _script(path: Path) -> None:
    verdict = {"complete": True, "success": True, "summary": "wrote it"}
    write = {"name": "write_file", "arguments": {"path": "/shared/outbox/a.txt", "content": "x"}}
    path.write_text(json.dumps({
        "steps": [{"kind": "reply", "tool_calls": [write]}, {"kind": "reply", "text": "Done."}],
        "default": {"kind": "reply", "text": json.dumps(verdict)},
    }))  # fmt: skip


def _status(hc: Hivecell, method: str, path: str, body: Any = None) -> tuple[int, str]:
    try:
        return 200, json.dumps(hc.api(method, path, body))
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_ended(hc: Hivecell, task_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # polling the REST view, as a client would
        task = hc.api("GET", f"/tasks/{task_id}")
        if task["status"] in ("completed", "failed", "cancelled", "timed_out"):
            return dict(task)
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never ended")


def test_environment_provider_is_listed_default_and_runs_tasks(short_home: Path) -> None:
    script = short_home / "script.json"
    _script(script)
    with running_hivecell(short_home, script, from_environment=True) as hc:
        assert not (short_home / "config.toml").exists()
        listing = hc.api("GET", "/providers")
        assert listing["default"] == "environment"
        [env] = listing["items"]
        assert env["name"] == "environment" and env["default"] is True
        assert (env["source"], env["read_only"], env["model"]) == ("environment", True, "env-model")
        assert env["base_url"].startswith("http://127.0.0.1:")
        assert env["api_key"] == "…" + KEY[-4:]
        assert KEY not in json.dumps(listing)

        task = hc.api("POST", "/tasks", {"description": "write a file", "max_steps": 5})
        ended = _wait_ended(hc, task["id"])
        assert ended["status"] == "completed", ended
        assert (ended["provider"], ended["model"]) == ("environment", "env-model")

        tested = hc.api("POST", "/providers/environment/test")
        assert tested["ok"] is True and tested["model"] == "env-model", tested

        # Read-only: neither overwritten nor deleted through the API; the key stays put.
        saved = {"name": "environment", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
        code, text = _status(hc, "POST", "/providers", saved)
        assert code == 422 and "read-only" in text and "OPENAI_API_KEY" in text
        code, text = _status(hc, "DELETE", "/providers/environment")
        assert code == 422 and "read-only" in text
        # A test against another URL must bring its own key: the environment's never leaves.
        code, text = _status(hc, "POST", "/providers/environment/test",
                             {"base_url": "http://127.0.0.1:9/v1"})  # fmt: skip
        assert code == 422 and "api_key" in text
        assert hc.api("GET", "/providers")["items"] == [env]


def test_config_default_wins_and_environment_is_listed_beside_it(short_home: Path) -> None:
    script = short_home / "script.json"
    _script(script)
    with running_hivecell(short_home, script, from_environment=True) as hc:
        hc.api("POST", "/providers", {"name": "lab", "base_url": "http://127.0.0.1:9/v1",
                                      "model": "lab-model", "default": True})  # fmt: skip
        listing = hc.api("GET", "/providers")
        assert listing["default"] == "lab"
        sources = {p["name"]: (p["source"], p["default"]) for p in listing["items"]}
        assert sources == {"lab": ("config", True), "environment": ("environment", False)}
