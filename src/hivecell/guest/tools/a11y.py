"""Guest tools: the accessibility tree (AT-SPI) and acting on its elements.

The walk and the element calls block on the accessibility bus, so they run on a worker
thread, each on its own connection and under a deadline: a hung or flooding app costs the
call its budget and the agent stays responsive (the thread is abandoned on timeout and ends
at its own deadline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from hivecell.errors import InvalidParams, NotFound, NotSupported, Timeout, ToolFailed
from hivecell.guest import a11ytree as tree
from hivecell.guest.context import CallContext
from hivecell.guest.dbuswire import Bus, BusError
from hivecell.guest.dispatch import Router
from hivecell.guest.tools import input as pointer
from hivecell.guest.tools.screen import maybe_settle
from hivecell.protocol import methods as m

router = Router()
ELEMENT_TIMEOUT_S = 3.0  # one element action: lookup plus the app's answer
GRACE_S = 1.0  # beyond the walk's own budget before the call gives up on the thread
T = TypeVar("T")


@router.method("accessibility_tree")
async def accessibility_tree(p: m.AccessibilityTreeParams, ctx: CallContext) -> m.AccessibilityTree:
    size = await ctx.services.x.screen_size()
    limits = tree.Limits(p.max_nodes, p.max_depth, p.budget_ms / 1000, size)
    walked = await _on_bus(ctx, lambda bus: tree.walk(bus, limits), limits.budget_s)
    return m.AccessibilityTree(
        nodes=[_info(node) for node in walked.nodes],
        text=tree.render(walked, p.scale),
        truncated=walked.truncated,
        visited=walked.visited,
        elapsed_ms=round(walked.elapsed_ms, 1),
    )


def _info(node: tree.Node) -> m.ElementInfo:
    x, y, w, h = node.bounds
    return m.ElementInfo(
        id=node.id, role=node.role, name=node.name, value=node.value, states=node.states,
        x=x, y=y, width=w, height=h, depth=node.depth, actionable=node.actions,
        editable=node.editable,
    )  # fmt: skip


@router.method("click_element")
async def click_element(p: m.ElementParams, ctx: CallContext) -> m.ElementActed:
    def act(bus: Bus) -> tuple[str | None, tree.Element]:
        element = _lookup(bus, p.id)
        return tree.do_default_action(bus, element, ELEMENT_TIMEOUT_S), element

    action, element = await _on_bus(ctx, act, ELEMENT_TIMEOUT_S)
    how = f"action {action}" if action else await _click_centre(p, element, ctx)
    await maybe_settle(p, ctx)
    return m.ElementActed(id=p.id, how=how)


@router.method("set_element_text")
async def set_element_text(p: m.SetElementTextParams, ctx: CallContext) -> m.ElementActed:
    def act(bus: Bus) -> tuple[bool, tree.Element]:
        element = _lookup(bus, p.id)
        return tree.set_text(bus, element, p.text, ELEMENT_TIMEOUT_S), element

    done, element = await _on_bus(ctx, act, ELEMENT_TIMEOUT_S)
    how = "editable text" if done else await _type_into(p, element, ctx)
    await maybe_settle(p, ctx)
    return m.ElementActed(id=p.id, how=how)


async def _click_centre(p: m.ElementParams, element: tree.Element, ctx: CallContext) -> str:
    cx, cy = _centre(p.id, element)
    await pointer.mouse_click(m.MouseClickParams(x=cx, y=cy), ctx)
    return f"mouse click at {cx},{cy}"


async def _type_into(p: m.SetElementTextParams, element: tree.Element, ctx: CallContext) -> str:
    """No EditableText: focus it (AT-SPI, else a click), select all, type over it."""
    focused = await _on_bus(
        ctx, lambda bus: tree.grab_focus(bus, element, ELEMENT_TIMEOUT_S), ELEMENT_TIMEOUT_S
    )
    if not focused:
        await _click_centre(p, element, ctx)
    await pointer.keyboard_key(m.KeyboardKeyParams(keys="ctrl+a"), ctx)
    if p.text:
        await pointer.keyboard_type(m.KeyboardTypeParams(text=p.text), ctx)
    else:
        await pointer.keyboard_key(m.KeyboardKeyParams(keys="BackSpace"), ctx)
    return "focus, select all and typing"


def _centre(element_id: str, element: tree.Element) -> tuple[int, int]:
    if element.bounds is None or element.bounds[2] <= 0 or element.bounds[3] <= 0:
        raise ToolFailed(
            f"element {element_id} has no action and no size on screen to click; "
            "take a fresh accessibility_tree and pick a visible element"
        )
    x, y, w, h = element.bounds
    return max(0, x + w // 2), max(0, y + h // 2)


def _lookup(bus: Bus, element_id: str) -> tree.Element:
    try:
        return tree.lookup(bus, element_id, ELEMENT_TIMEOUT_S)
    except ValueError:
        raise InvalidParams(
            f"{element_id!r} is not an element id; use an id from accessibility_tree "
            "(like '1.9:214')"
        ) from None
    except tree.StaleElement:
        raise NotFound(
            f"element {element_id} no longer exists (its app closed it or redrew the page); "
            "take a fresh accessibility_tree and use an id from it"
        ) from None
    except TimeoutError:
        raise Timeout(f"the app owning element {element_id} did not answer") from None


async def _on_bus(ctx: CallContext, work: Callable[[Bus], T], budget_s: float) -> T:
    address = ctx.config.a11y_bus
    if not address:
        raise NotSupported(
            "this sandbox has no accessibility bus; local sandboxes start one when dbus-daemon "
            "and at-spi2-core are installed (apt install dbus-daemon at-spi2-core)"
        )

    def run() -> T:
        bus = Bus(address, timeout=budget_s)
        try:
            return work(bus)
        finally:
            bus.close()

    try:
        with anyio.fail_after(budget_s + GRACE_S):
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
    except TimeoutError:
        raise Timeout(
            f"the accessibility bus did not answer within {budget_s + GRACE_S:.1f} s"
        ) from None
    except BusError as exc:
        raise ToolFailed(f"accessibility bus: {exc}") from None
