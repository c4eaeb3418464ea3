"""A scripted model for crews: plans, per-TODO agent scripts and summaries, by request content.

Agents run at once, so their requests interleave; each request is answered from what it is
(the plan, the summary, a completion check, or step N of the agent working on TODO X).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from hivecell.agent.llm.script import Reply, ScriptedToolCall
from tests.agent.helpers import act, call, verdict

TODO_ID = re.compile(r"Your TODO \(([^)]+)\)")


def plan_reply(*todos: dict[str, Any]) -> Reply:
    full = [{"detail": "", "depends_on": [], **todo} for todo in todos]
    return Reply(text=json.dumps({"todos": full}))


def done(summary: str) -> Reply:
    return act(call("todo_done", summary=summary))


def failed(reason: str) -> Reply:
    return act(call("todo_failed", reason=reason))


def shell(command: str) -> Reply:
    return act(call("run_shell", command=command))


@dataclass
class CrewModel:
    plans: list[Reply]
    todos: dict[str, Sequence[Reply]]
    summary: str = "all done"
    seen: list[str] = field(default_factory=list)  # which kind each request was
    working: set[str] = field(default_factory=set)  # TODOs whose agent asked the model
    all_working: anyio.Event = field(default_factory=anyio.Event)  # every TODO's agent did

    def __call__(self, request: dict[str, Any]) -> Reply:
        name = (request.get("response_format") or {}).get("json_schema", {}).get("name")
        self.seen.append(name or "agent")
        if name == "crew_plan":
            return self.plans.pop(0) if len(self.plans) > 1 else self.plans[0]
        if name == "crew_summary":
            return Reply(text=json.dumps({"summary": self.summary}))
        if name == "completion_check":
            return verdict(success=True, summary="finished")
        return self._agent_step(request)

    def _agent_step(self, request: dict[str, Any]) -> Reply:
        first_user = next(m for m in request["messages"] if m["role"] == "user")
        text = (
            first_user["content"]
            if isinstance(first_user["content"], str)
            else json.dumps(first_user["content"])
        )
        found = TODO_ID.search(text)
        assert found, f"an agent request without a TODO: {text[:300]}"
        step = sum(1 for m in request["messages"] if m["role"] == "assistant")
        self.working.add(found.group(1))
        if self.working == set(self.todos):
            self.all_working.set()
        script = self.todos[found.group(1)]
        return script[min(step, len(script) - 1)]


def tool_call_names(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools") or []]


__all__ = ["CrewModel", "ScriptedToolCall", "done", "failed", "plan_reply", "shell"]
