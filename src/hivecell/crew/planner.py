"""The crew's two model calls: the plan (goal -> TODOs) and the summary (results -> text).

Both use JSON-schema structured output like the completion check. A reply that is not the
asked-for JSON, or a plan that does not hold together (a cycle, an unknown dependency), is
asked for again with the fault named, a few times, before the crew fails with that fault.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.agent.runner import ChatModel
from hivecell.crew import whiteboard
from hivecell.crew.models import MAX_TODOS, Crew, Todo
from hivecell.errors import HivecellError, InvalidParams

ATTEMPTS = 3
PLANNED = {"id", "title", "detail", "depends_on"}  # what a plan may set of a TODO

PLAN_PROMPT = """\
You plan work for a crew of {agents} agents. Each agent has its own Linux desktop with a \
browser, a shell and office tools, and works on one TODO at a time; agents share files in \
/shared/crew and see each other's notes. Split the goal into TODOs that can run in \
parallel where possible (at most {max_todos}); give each an id (short, like "t1"), a title, \
a detail saying exactly what to produce and where to save it, and depends_on: the ids of \
TODOs whose results it needs.

Goal: {goal}
Input files (in every agent's /shared/inbox): {files}"""

SUMMARY_PROMPT = """\
A crew of agents worked on this goal: {goal}

The whiteboard at the end:
{board}

Write the summary for the person: what was achieved, what failed or was left out, and where \
the results are (every agent's outputs are gathered in one folder)."""


def _schema(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": True,
            "schema": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


_TODO_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "detail": {"type": "string"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["id", "title", "detail", "depends_on"],
    "additionalProperties": False,
}
PLAN_SCHEMA = _schema("crew_plan", {"todos": {"type": "array", "items": _TODO_SCHEMA}})
SUMMARY_SCHEMA = _schema("crew_summary", {"summary": {"type": "string"}})


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    todos: list[Todo] = Field(min_length=1)


class _Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary: str = Field(min_length=1)


class PlanningFailed(HivecellError):
    code = "crew_planning_failed"


async def plan(llm: ChatModel, crew: Crew, spent: list[Any]) -> list[Todo]:
    """TODOs for ``crew``'s goal; every model response is appended to ``spent`` (its cost)."""
    prompt = PLAN_PROMPT.format(
        agents=crew.agents,
        max_todos=MAX_TODOS,
        goal=crew.goal,
        files=", ".join(crew.files) or "none",
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    fault = ""
    for _ in range(ATTEMPTS):
        response = await llm.complete(messages, response_format=PLAN_SCHEMA)
        spent.append(response)
        try:
            sent = _Plan.model_validate(json.loads(response.text or "")).todos
            # Only what a plan may say: a model cannot mark its own TODOs done.
            todos = [
                Todo(**t.model_dump(include={"id", "title", "detail", "depends_on"})) for t in sent
            ]
            whiteboard.check_plan(todos)
            return todos
        except (ValueError, ValidationError, InvalidParams) as exc:
            fault = _short(exc)
        messages += [
            {"role": "assistant", "content": response.text or ""},
            {"role": "user", "content": f"That plan cannot be used: {fault}. Send it again."},
        ]
    raise PlanningFailed(
        f"the model sent no usable plan in {ATTEMPTS} tries (last fault: {fault}); try a "
        "clearer goal or a model that supports structured output",
        op="crew.plan",
    )


async def summarize(llm: ChatModel, crew: Crew, spent: list[Any]) -> str:
    """The crew summary; a model that sends no usable JSON gets the whiteboard as summary."""
    prompt = SUMMARY_PROMPT.format(goal=crew.goal, board=whiteboard.render(crew))
    response = await llm.complete(
        [{"role": "user", "content": prompt}], response_format=SUMMARY_SCHEMA
    )
    spent.append(response)
    try:
        return _Summary.model_validate(json.loads(response.text or "")).summary
    except (ValueError, ValidationError):
        return (response.text or "").strip() or whiteboard.render(crew)


def _short(exc: Exception, limit: int = 500) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
