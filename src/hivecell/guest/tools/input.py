"""Guest tools: pointer and keyboard input through XTest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from hivecell.errors import InvalidParams
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.guest.tools.screen import maybe_settle
from hivecell.guest.x11 import BUTTONS, XSession, char_keysym, keysym_from_name
from hivecell.protocol import methods as m

router = Router()
TYPE_CHUNK = 64  # characters per worker-thread call; cancellation takes effect between chunks
DRAG_STEP_S = 0.004  # toolkits that track drag velocity drop motion sent as one burst
MODIFIERS = {
    "ctrl": "Control_L", "control": "Control_L", "alt": "Alt_L", "shift": "Shift_L",
    "super": "Super_L", "win": "Super_L", "meta": "Super_L", "cmd": "Super_L",
    "altgr": "ISO_Level3_Shift",
}  # fmt: skip
ALIASES = {
    "enter": "Return", "esc": "Escape", "del": "Delete", "ins": "Insert", "pgup": "Prior",
    "pageup": "Prior", "pgdn": "Next", "pagedown": "Next", "caps": "Caps_Lock",
    "capslock": "Caps_Lock", "arrowup": "Up", "arrowdown": "Down", "arrowleft": "Left",
    "arrowright": "Right", "spacebar": "space",
}  # fmt: skip
KEY_EXAMPLES = "Return, Tab, Escape, BackSpace, Delete, Up, Page_Down, F5, a, ctrl+c, alt+F4, super"


# --- pointer -----------------------------------------------------------------------------
@router.method("mouse_move")
async def mouse_move(p: m.MouseMoveParams, ctx: CallContext) -> m.Position:
    x = ctx.services.x
    await x.run(_move, x, p.x, p.y)
    await maybe_settle(p, ctx)
    return m.Position(x=p.x, y=p.y)


@router.method("mouse_click")
async def mouse_click(p: m.MouseClickParams, ctx: CallContext) -> m.Position:
    x = ctx.services.x
    async with held(x, p.hold):  # e.g. ctrl+click, shift+click
        await x.run(_click, x, p.x, p.y, BUTTONS[p.button], p.clicks)
    await maybe_settle(p, ctx)
    return m.Position(x=p.x, y=p.y)


@router.method("mouse_drag")
async def mouse_drag(p: m.MouseDragParams, ctx: CallContext) -> m.Position:
    x, button = ctx.services.x, BUTTONS[p.button]
    await x.run(_check_points, x, [(p.from_x, p.from_y), (p.to_x, p.to_y)])
    await x.run(_press_at, x, p.from_x, p.from_y, button)
    try:
        for px, py in drag_path(p):
            await anyio.sleep(DRAG_STEP_S)
            await x.run(_drag_to, x, px, py, button)
    finally:
        with anyio.CancelScope(shield=True):  # never leave a button held down
            await x.run(_release, x, button)
    await maybe_settle(p, ctx)
    return m.Position(x=p.to_x, y=p.to_y)


@router.method("mouse_button")
async def mouse_button(p: m.MouseButtonParams, ctx: CallContext) -> m.Position:
    # Separate press and release (Anthropic's left_mouse_down/up), with moves in between.
    x, button = ctx.services.x, BUTTONS[p.button]
    px, py = await x.run(x.pointer_sync)
    if p.down:
        await x.run(_press_at, x, px, py, button)
    else:
        await x.run(_release, x, button)
    await maybe_settle(p, ctx)
    return m.Position(x=px, y=py)


def drag_path(p: m.MouseDragParams) -> list[tuple[int, int]]:
    dx, dy = p.to_x - p.from_x, p.to_y - p.from_y
    return [
        (p.from_x + round(dx * i / p.steps), p.from_y + round(dy * i / p.steps))
        for i in range(1, p.steps + 1)
    ]


@router.method("scroll")
async def scroll(p: m.ScrollParams, ctx: CallContext) -> m.Position:
    if not (p.dx or p.dy):
        raise InvalidParams("dx and dy are both 0; pass e.g. dy=3 to scroll down three notches")
    x = ctx.services.x
    async with held(x, p.hold):  # e.g. ctrl+wheel zooms
        await x.run(_scroll, x, p.x, p.y, p.dx, p.dy)
    await maybe_settle(p, ctx)
    return m.Position(x=p.x, y=p.y)


def _check_points(x: XSession, points: list[tuple[int, int]]) -> None:
    width, height = x.size_sync()
    for px, py in points:
        if px >= width or py >= height:
            raise InvalidParams(
                f"point ({px}, {py}) is outside the {width}x{height} screen; "
                f"use 0 <= x < {width} and 0 <= y < {height}",
                context={"x": px, "y": py, "screen_width": width, "screen_height": height},
            )


def _move(x: XSession, px: int, py: int) -> None:
    _check_points(x, [(px, py)])
    x.motion_sync(px, py)
    x.await_pointer_sync(px, py, held=None)


def _drag_to(x: XSession, px: int, py: int, button: int) -> None:
    x.motion_sync(px, py)
    x.await_pointer_sync(px, py, held=button)


def _click(x: XSession, px: int, py: int, button: int, clicks: int) -> None:
    _check_points(x, [(px, py)])
    x.motion_sync(px, py)
    for _ in range(clicks):
        x.button_sync(button, True)
        x.button_sync(button, False)
    x.await_pointer_sync(px, py)


def _press_at(x: XSession, px: int, py: int, button: int) -> None:
    x.motion_sync(px, py)
    x.button_sync(button, True)
    x.await_pointer_sync(px, py, held=button)


def _release(x: XSession, button: int) -> None:
    x.button_sync(button, False)
    px, py = x.pointer_sync()
    x.await_pointer_sync(px, py)


def _scroll(x: XSession, px: int, py: int, dx: int, dy: int) -> None:
    _check_points(x, [(px, py)])
    x.motion_sync(px, py)
    # X wheel buttons: 4 up, 5 down, 6 left, 7 right; one press per notch.
    for button, notches in ((5 if dy > 0 else 4, abs(dy)), (7 if dx > 0 else 6, abs(dx))):
        for _ in range(notches):
            x.button_sync(button, True)
            x.button_sync(button, False)
    x.await_pointer_sync(px, py)


# --- keyboard ----------------------------------------------------------------------------
@router.method("keyboard_type")
async def keyboard_type(p: m.KeyboardTypeParams, ctx: CallContext) -> m.TypedResult:
    keysyms = text_keysyms(p.text)
    x = ctx.services.x
    step = 1 if p.delay_ms else TYPE_CHUNK
    for start in range(0, len(keysyms), step):
        if p.delay_ms and start:
            await anyio.sleep(p.delay_ms / 1000)
        await x.run(x.type_sync, keysyms[start : start + step])
    await maybe_settle(p, ctx)
    return m.TypedResult(characters=len(p.text))


def text_keysyms(text: str) -> list[int]:
    keysyms = []
    for index, char in enumerate(text.replace("\r\n", "\n").replace("\r", "\n")):
        keysym = char_keysym(char)
        if keysym is None:
            raise InvalidParams(
                f"character {char!r} at index {index} has no key; remove it, or send control "
                "keys with keyboard_key (e.g. 'ctrl+c')",
                context={"index": index},
            )
        keysyms.append(keysym)
    return keysyms


@router.method("keyboard_key")
async def keyboard_key(p: m.KeyboardKeyParams, ctx: CallContext) -> m.Ok:
    keysyms = parse_keys(p.keys)
    x = ctx.services.x
    for _ in range(p.repeat):
        await x.run(x.combo_sync, keysyms)
    await maybe_settle(p, ctx)
    return m.Ok()


@router.method("keyboard_hold")
async def keyboard_hold(p: m.KeyboardHoldParams, ctx: CallContext) -> m.Ok:
    async with held(ctx.services.x, p.keys):
        await anyio.sleep(p.seconds)  # the hold itself: X repeats the key meanwhile
    await maybe_settle(p, ctx)
    return m.Ok()


@asynccontextmanager
async def held(x: XSession, keys: str | None) -> AsyncIterator[None]:
    """Keys down for the body; released whatever happens (cancel, a point off screen)."""
    if not keys:
        yield
        return
    keysyms = parse_keys(keys)  # bad names fail before anything is pressed
    pressed = await x.run(x.press_sync, keysyms)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):  # never leave a key held down
            await x.run(x.release_sync, pressed)


def parse_keys(keys: str) -> list[int]:
    """'ctrl+shift+t' -> keysyms to hold in order. In a combo a letter names its key, so
    'ctrl+T' is ctrl+t; add 'shift' explicitly for the shifted variant."""
    names = split_keys(keys)
    return [_key_keysym(name, keys, in_combo=len(names) > 1) for name in names]


def split_keys(keys: str) -> list[str]:
    text = keys.strip()
    if text == "+":
        return ["+"]
    if text.endswith("++"):
        return [*split_keys(text[:-2]), "+"] if text[:-2].strip() else ["+"]
    names = [name.strip() for name in text.split("+")]
    if not all(names):
        raise InvalidParams(f"empty key name in {keys!r}; write combos like 'ctrl+shift+t'")
    return names


def _key_keysym(name: str, keys: str, *, in_combo: bool) -> int:
    lowered = name.lower()
    if len(name) == 1:
        keysym = char_keysym(lowered if in_combo else name)
    else:
        keysym = keysym_from_name(MODIFIERS.get(lowered) or ALIASES.get(lowered) or name)
    if not keysym:
        raise InvalidParams(
            f"unknown key {name!r} in {keys!r}; use X keysym names or aliases, e.g. {KEY_EXAMPLES}",
            context={"key": name},
        )
    return keysym
