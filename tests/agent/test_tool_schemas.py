"""Tool schemas are built once per set of disabled tools, not at every model request."""

from __future__ import annotations

import pytest

from hivecell.agent import tools
from hivecell.agent.tools import TOOLS, ToolBox


async def _no_guest(method: str, params: dict[str, object]) -> object:
    raise AssertionError("no guest call expected")


def test_schemas_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    disabled = frozenset({"mouse_move"})  # a set nobody else asked for: not cached yet
    built: list[str] = []
    original = tools.ToolDef.schema

    def counting(self: tools.ToolDef) -> dict[str, object]:
        built.append(self.name)
        return original(self)

    monkeypatch.setattr(tools.ToolDef, "schema", counting)
    box = ToolBox(_no_guest, disabled=disabled)
    first = box.schemas()
    first.append({"type": "function", "function": {"name": "host_tool"}})  # a caller's own
    second = box.schemas()
    assert len(built) == len(TOOLS) - 1  # each enabled tool once, for both calls
    assert [s["function"]["name"] for s in second] == [n for n in TOOLS if n != "mouse_move"]
