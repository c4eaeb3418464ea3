"""Assembles the guest agent: every tool module's router behind one dispatcher."""

from __future__ import annotations

from types import ModuleType

from hivecell.guest.dispatch import Dispatcher
from hivecell.guest.tools import (
    browser,
    clipboard,
    desktop,
    display,
    files,
    finder,
    input,
    media,
    screen,
    session,
    shell,
    system,
    windows,
)

# Imported on their first call: the accessibility tree's D-Bus client is ~35 ms of a ~320 ms
# agent import, on the critical path of every cold start, for tools many tasks never use.
LAZY_TOOLS = {
    "hivecell.guest.tools.a11y": ("accessibility_tree", "click_element", "set_element_text"),
}


def build_dispatcher() -> Dispatcher:
    routers: tuple[ModuleType, ...] = (
        session,
        shell,
        files,
        screen,
        input,
        clipboard,
        desktop,
    )
    routers += (windows, display, system, finder, browser, media)  # the seed-002 catalogue
    return Dispatcher(*(module.router for module in routers), lazy=LAZY_TOOLS)
