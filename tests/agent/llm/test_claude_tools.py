"""Anthropic's native tools <-> hivecell tools: versions per model, every action's mapping,
and bad actions coming back as errors for the model (never dropped)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hivecell.agent.edits import insert_after, replace_once
from hivecell.agent.llm.claude_actions import to_call
from hivecell.agent.llm.claude_tools import Display, native_tool, native_tools, versions_for
from hivecell.agent.tools import TOOLS, ToolBox
from hivecell.errors import InvalidParams

SCREEN = Display(1024, 768)  # the model's pixels are the runner's
HALF = Display(640, 400, source=(1280, 800))  # the adapter scaled the screenshot by half


def computer(action: str, display: Display = SCREEN, **input: Any) -> tuple[str, Any, str | None]:
    call = to_call("toolu_1", "computer", {"action": action, **input}, display)
    return call.name, call.arguments, call.parse_error


@pytest.mark.parametrize(
    ("model", "version", "beta"),
    [
        ("claude-opus-4-5", "computer_20251124", "computer-use-2025-11-24"),
        ("claude-opus-4-5-20251101", "computer_20251124", "computer-use-2025-11-24"),
        ("claude-sonnet-4-5-20250929", "computer_20250124", "computer-use-2025-01-24"),
        ("anthropic/claude-haiku-4-5", "computer_20250124", "computer-use-2025-01-24"),
        ("claude-opus-4-1", "computer_20250124", "computer-use-2025-01-24"),
        ("claude-future-9", "computer_20250124", "computer-use-2025-01-24"),
    ],
)
def test_the_computer_tool_version_matches_the_model(model: str, version: str, beta: str) -> None:
    versions = versions_for(model)
    assert (versions.computer, versions.beta) == (version, beta)


def test_gui_tools_become_one_computer_tool_and_the_rest_stay_custom() -> None:
    schemas = [t.schema() for t in TOOLS.values()]
    tools = native_tools(schemas, versions_for("claude-opus-4-5"), Display(1280, 800))
    by_name = {t["name"]: t for t in tools}
    assert by_name["computer"] == {
        "type": "computer_20251124",
        "name": "computer",
        "display_width_px": 1280,
        "display_height_px": 800,
        "enable_zoom": True,
    }
    assert by_name["bash"]["type"] == "bash_20250124"
    assert by_name["str_replace_based_edit_tool"]["type"] == "text_editor_20250728"
    replaced = {"mouse_click", "keyboard_type", "keyboard_key", "scroll", "mouse_drag"}
    replaced |= {"mouse_down", "mouse_up", "keyboard_hold"}
    replaced |= {"screenshot", "wait", "run_shell", "read_file", "write_file", "edit_file"}
    replaced |= {"cursor_position", "zoom"}
    assert not replaced & set(by_name)
    for custom in ("ask_user", "ask_user_choice", "open_app", "clipboard_write", "list_directory"):
        assert by_name[custom]["input_schema"]["type"] == "object", custom


def test_zoom_is_enabled_only_where_the_model_and_the_task_have_it() -> None:
    schemas = [t.schema() for t in TOOLS.values()]
    older = {t["name"]: t for t in native_tools(schemas, versions_for("claude-haiku-4-5"), SCREEN)}
    assert "enable_zoom" not in older["computer"]  # computer_20250124 has no zoom action ...
    assert "zoom" in older  # ... so hivecell's own zoom tool stays offered
    no_display = [s for s in schemas if s["function"]["name"] != "zoom"]
    newer = native_tools(no_display, versions_for("claude-opus-4-5"), SCREEN)
    assert next(t for t in newer if t["name"] == "computer")["enable_zoom"] is False


def test_disabled_native_parts_are_not_offered() -> None:
    schemas = [t.schema() for n, t in TOOLS.items() if n not in ("run_shell", "mouse_click")]
    names = [t["name"] for t in native_tools(schemas, versions_for("claude-x"), SCREEN)]
    assert "bash" not in names and "computer" in names  # other GUI tools keep the computer
    gui_off = [t.schema() for n, t in TOOLS.items() if n in ("ask_user", "wait")]
    names = [t["name"] for t in native_tools(gui_off, versions_for("claude-x"), SCREEN)]
    assert names == ["wait", "ask_user"]


@pytest.mark.parametrize(
    ("action", "extra", "tool", "arguments"),
    [
        ("left_click", {}, "mouse_click", {"x": 10, "y": 20}),
        ("right_click", {}, "mouse_click", {"x": 10, "y": 20, "button": "right"}),
        ("middle_click", {}, "mouse_click", {"x": 10, "y": 20, "button": "middle"}),
        ("double_click", {}, "mouse_click", {"x": 10, "y": 20, "clicks": 2}),
        ("left_click", {"text": "shift"}, "mouse_click", {"x": 10, "y": 20, "hold": "shift"}),
        ("double_click", {"text": "ctrl+shift"}, "mouse_click",
         {"x": 10, "y": 20, "clicks": 2, "hold": "ctrl+shift"}),
        ("scroll", {"scroll_direction": "up", "scroll_amount": 1, "text": "ctrl"}, "scroll",
         {"x": 10, "y": 20, "dx": 0, "dy": -1, "hold": "ctrl"}),
        ("triple_click", {}, "mouse_click", {"x": 10, "y": 20, "clicks": 3}),
        ("mouse_move", {}, "mouse_move", {"x": 10, "y": 20}),
        ("scroll", {"scroll_direction": "down", "scroll_amount": 5}, "scroll",
         {"x": 10, "y": 20, "dx": 0, "dy": 5}),
        ("scroll", {"scroll_direction": "up", "scroll_amount": 2}, "scroll",
         {"x": 10, "y": 20, "dx": 0, "dy": -2}),
        ("scroll", {"scroll_direction": "left", "scroll_amount": 1}, "scroll",
         {"x": 10, "y": 20, "dx": -1, "dy": 0}),
        ("scroll", {"scroll_direction": "right", "scroll_amount": 3}, "scroll",
         {"x": 10, "y": 20, "dx": 3, "dy": 0}),
    ],
)  # fmt: skip
def test_pointer_actions(action: str, extra: dict[str, Any], tool: str, arguments: Any) -> None:
    name, args, error = computer(action, coordinate=[10, 20], **extra)
    assert (name, args, error) == (tool, arguments, None)
    # each becomes a call hivecell's own validation accepts
    TOOLS[name].args.model_validate(args)


def test_other_actions() -> None:
    drag = computer("left_click_drag", start_coordinate=[1, 2], coordinate=[30, 40])
    assert drag == ("mouse_drag", {"from_x": 1, "from_y": 2, "to_x": 30, "to_y": 40}, None)
    assert computer("type", text="héllo\n") == ("keyboard_type", {"text": "héllo\n"}, None)
    assert computer("key", text="ctrl+s") == ("keyboard_key", {"keys": "ctrl+s"}, None)
    assert computer("key", text="Return") == ("keyboard_key", {"keys": "Return"}, None)
    assert computer("wait", duration=2) == ("wait", {"seconds": 2}, None)
    assert computer("screenshot") == ("screenshot", {}, None)
    assert computer("hold_key", text="shift", duration=2) == (
        "keyboard_hold",
        {"keys": "shift", "seconds": 2},
        None,
    )
    assert computer("cursor_position") == ("cursor_position", {}, None)
    assert computer("left_mouse_down") == ("mouse_down", {}, None)
    assert computer("left_mouse_up") == ("mouse_up", {}, None)


def test_zoom_maps_the_region_and_fills_about_one_screenshot() -> None:
    name, args, error = computer("zoom", HALF, region=[320, 200, 480, 300])  # a quarter
    assert (name, error) == ("zoom", None)
    # the runner's pixels (twice the model's), enlarged 4x in the model's: 2x in the runner's
    assert args == {"x": 640, "y": 400, "width": 320, "height": 200, "zoom": 2.0}
    TOOLS["zoom"].args.model_validate(args)
    whole = computer("zoom", SCREEN, region=[0, 0, 1024, 768])[1]
    assert whole == {"x": 0, "y": 0, "width": 1024, "height": 768, "zoom": 1.0}
    tiny = computer("zoom", SCREEN, region=[10, 10, 12, 11])[1]
    assert tiny["zoom"] == 8.0  # capped, like hivecell's own zoom tool


def test_coordinates_map_back_through_the_adapters_scale() -> None:
    assert computer("left_click", HALF, coordinate=[639, 399])[1] == {"x": 1278, "y": 798}
    drag = computer("left_click_drag", HALF, start_coordinate=[0, 1], coordinate=[5, 6])
    assert drag[1] == {"from_x": 0, "from_y": 2, "to_x": 10, "to_y": 12}


@pytest.mark.parametrize(
    ("input", "words"),
    [
        ({"action": "fly"}, "unknown computer action 'fly'"),
        ({"action": "left_click"}, "coordinate must be [x, y]"),
        ({"action": "left_click", "coordinate": [5]}, "coordinate must be [x, y]"),
        ({"action": "left_click", "coordinate": ["1", 2]}, "coordinate must be [x, y]"),
        ({"action": "left_click", "coordinate": [1024, 5]}, "outside the screen (1024x768"),
        ({"action": "mouse_move", "coordinate": [-1, 5]}, "outside the screen"),
        ({"action": "left_click_drag", "coordinate": [1, 1]}, "start_coordinate must be"),
        ({"action": "scroll", "coordinate": [1, 1], "scroll_direction": "in"}, "up, down"),
        ({"action": "type"}, "type: text is required"),
        ({"action": "key", "text": "ctrl+a Delete"}, "one combination per key action"),
        ({"action": "hold_key", "duration": 1}, "hold_key: text is required"),
        ({"action": "left_mouse_down", "coordinate": [1, 1]}, "mouse_move there first"),
        ({"action": "zoom"}, "region must be [x0, y0, x1, y1]"),
        ({"action": "zoom", "region": [5, 0, 5, 5]}, "x0 < x1 and y0 < y1 inside the screen"),
        ({"action": "zoom", "region": [0, 0, 1025, 5]}, "inside the screen (1024x768"),
        ({"action": "left_click", "coordinate": [1, 1], "text": "ctrl c"}, "one combination"),
        ({"action": "left_click", "coordinate": [1, 1], "text": 5}, "must be a string"),
    ],
)
def test_bad_actions_become_errors_for_the_model(input: dict[str, Any], words: str) -> None:
    call = to_call("toolu_9", "computer", input, SCREEN)
    assert call.parse_error is not None and words in call.parse_error, call.parse_error
    assert call.arguments is None and call.name == "computer" and call.id == "toolu_9"
    assert json.loads(call.raw_arguments) == input  # shown back to the model as it was sent


def test_bash_and_the_editor() -> None:
    bash = to_call("t", "bash", {"command": "ls /"}, SCREEN)
    assert (bash.name, bash.arguments) == ("run_shell", {"command": "ls /"})
    assert "fresh shell" in (to_call("t", "bash", {"restart": True}, SCREEN).parse_error or "")
    edit = "str_replace_based_edit_tool"
    cases = {
        "view": ({"path": "/a"}, "read_file", {"path": "/a"}),
        "create": ({"path": "/a", "file_text": "x"}, "write_file", {"path": "/a", "content": "x"}),
        "str_replace": (
            {"path": "/a", "old_str": "x", "new_str": "y"},
            "edit_file",
            {"path": "/a", "old_str": "x", "new_str": "y"},
        ),
        "insert": (
            {"path": "/a", "insert_line": 2, "insert_text": "z"},
            "edit_file",
            {"path": "/a", "insert_line": 2, "new_str": "z"},
        ),
    }
    for command, (extra, tool, arguments) in cases.items():
        call = to_call("t", edit, {"command": command, **extra}, SCREEN)
        assert (call.name, call.arguments, call.parse_error) == (tool, arguments, None)
        TOOLS[tool].args.model_validate(arguments)
        # the conversation shows the model its own editor call again
        assert native_tool(call.name, call.raw_arguments) == (edit, {"command": command, **extra})
    undo = to_call("t", edit, {"command": "undo_edit", "path": "/a"}, SCREEN)
    assert "undo_edit" in (undo.parse_error or "")


def test_custom_tools_pass_through() -> None:
    call = to_call("t", "ask_user", {"question": "which?"}, SCREEN)
    assert (call.name, call.arguments) == ("ask_user", {"question": "which?"})
    assert native_tool("ask_user", call.raw_arguments) == ("ask_user", {"question": "which?"})
    assert native_tool("wait", '{"seconds": 1}') == ("wait", {"seconds": 1})
    assert native_tool("wait", '{"action": "wait", "duration": 1}')[0] == "computer"


def test_replace_needs_exactly_one_match() -> None:
    assert replace_once("a b a", "b", "c", "/f") == "a c a"
    with pytest.raises(InvalidParams, match="does not occur"):
        replace_once("abc", "x", "y", "/f")
    with pytest.raises(InvalidParams, match="occurs 2 times"):
        replace_once("a b a", "a", "y", "/f")


def test_insert_after_a_line() -> None:
    assert insert_after("one\ntwo\n", 0, "zero", "/f") == "zero\none\ntwo\n"
    assert insert_after("one\ntwo", 2, "three", "/f") == "one\ntwo\nthree\n"
    assert insert_after("one\ntwo\n", 1, "1.5\n", "/f") == "one\n1.5\ntwo\n"
    with pytest.raises(InvalidParams, match="past the end"):
        insert_after("one\n", 3, "x", "/f")


@pytest.mark.anyio
async def test_edit_file_reads_then_writes_and_refuses_a_partial_read() -> None:
    files = {"/f": {"content": "hello world", "truncated": False}}
    written: list[dict[str, Any]] = []

    async def guest(method: str, params: dict[str, Any]) -> Any:
        if method == "read_file":
            return files[params["path"]]
        written.append(params)
        return {"path": params["path"], "size": len(params["content"])}

    box = ToolBox(guest)
    args = box.validate("edit_file", {"path": "/f", "old_str": "world", "new_str": "there"})
    await box.execute("edit_file", args)
    assert written == [{"path": "/f", "content": "hello there", "mode": "overwrite"}]
    files["/f"]["truncated"] = True
    with pytest.raises(InvalidParams, match="too large to edit"):
        await box.execute("edit_file", args)
    both = box.validate("edit_file", {"path": "/f", "old_str": "a", "insert_line": 1})
    with pytest.raises(InvalidParams, match="exactly one of"):
        await box.execute("edit_file", both)


def test_view_range_is_composed_from_run_shell(tmp_path: Any) -> None:
    import subprocess

    path = tmp_path / "it's a file.txt"  # a quote in the name must not break out
    path.write_text("one\ntwo\nthree\nfour\n")
    edit = "str_replace_based_edit_tool"
    call = to_call("t", edit, {"command": "view", "path": str(path), "view_range": [2, 3]}, SCREEN)
    assert call.name == "run_shell" and call.arguments is not None
    shown = subprocess.run(["sh", "-c", call.arguments["command"]], capture_output=True, text=True)
    assert shown.stdout == "2\ttwo\n3\tthree\n"
    tail = to_call("t", edit, {"command": "view", "path": str(path), "view_range": [4, -1]}, SCREEN)
    assert tail.arguments is not None
    shown = subprocess.run(["sh", "-c", tail.arguments["command"]], capture_output=True, text=True)
    assert shown.stdout == "4\tfour\n"
    for bad in ([0, 2], [3, 2], ["1", 2], [1]):
        wrong = to_call("t", edit, {"command": "view", "path": "/a", "view_range": bad}, SCREEN)
        assert "view_range must be" in (wrong.parse_error or ""), bad


@pytest.mark.anyio
async def test_held_keys_and_the_cursor_through_hivecells_own_tools() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    async def guest(method: str, params: dict[str, Any]) -> Any:
        calls.append((method, params))
        return {"x": 640, "y": 400}

    box = ToolBox(guest)
    box.scale = 0.5  # the model sees the screen at half size
    click = box.validate("mouse_click", {"x": 10, "y": 20, "hold": "ctrl"})
    await box.execute("mouse_click", click)
    await box.execute("scroll", box.validate("scroll", {"x": 1, "y": 1, "dy": 2, "hold": "shift"}))
    await box.execute("mouse_click", box.validate("mouse_click", {"x": 1, "y": 1}))
    assert await box.execute("cursor_position", box.validate("cursor_position", {})) == {
        "x": 320,
        "y": 200,
    }  # in the screenshot's pixels, like every point the model gives
    assert calls == [
        ("mouse_click", {"x": 20, "y": 40, "button": "left", "clicks": 1, "hold": "ctrl"}),
        ("scroll", {"x": 2, "y": 2, "dx": 0, "dy": 2, "hold": "shift"}),
        ("mouse_click", {"x": 2, "y": 2, "button": "left", "clicks": 1}),
        ("get_cursor_position", {}),
    ]
