"""Tools that run on the host, beside the guest's: what a caller (a crew) adds to one task.

A host tool sees only its validated arguments; it never touches the sandbox. Raising
``TaskEnds`` from one ends the task with that verdict, the way the completion check does
(a crew agent's ``todo_done`` / ``todo_failed``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from hivecell.agent.tools import TOOLS


class TaskEnds(Exception):  # a verdict, not an error
    def __init__(self, success: bool, summary: str) -> None:
        super().__init__(summary)
        self.success = success
        self.summary = summary


@dataclass(frozen=True)
class HostTool:
    name: str
    description: str
    args: type[BaseModel]
    call: Callable[[Any], Awaitable[Any]]

    def schema(self) -> dict[str, Any]:
        params = self.args.model_json_schema()
        params.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


def by_name(tools: Sequence[HostTool]) -> dict[str, HostTool]:
    """Index ``tools``; a name that shadows a guest tool or repeats is a programming error."""
    found: dict[str, HostTool] = {}
    for tool in tools:
        if tool.name in TOOLS or tool.name in found:
            raise ValueError(f"host tool {tool.name!r} clashes with another tool of that name")
        found[tool.name] = tool
    return found
