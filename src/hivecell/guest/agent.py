"""Assembles the guest agent: every tool module's router behind one dispatcher."""

from __future__ import annotations

from types import ModuleType

from hivecell.guest.dispatch import Dispatcher
from hivecell.guest.tools import (
    a11y,
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


def build_dispatcher() -> Dispatcher:
    routers: tuple[ModuleType, ...] = (
        session,
        shell,
        files,
        screen,
        input,
        clipboard,
        desktop,
        a11y,
    )
    routers += (windows, display, system, finder, browser, media)  # the seed-002 catalogue
    return Dispatcher(*(module.router for module in routers))
