"""Assembles the guest agent: every tool module's router behind one dispatcher."""

from __future__ import annotations

from hivecell.guest.dispatch import Dispatcher
from hivecell.guest.tools import a11y, clipboard, desktop, files, input, screen, session, shell


def build_dispatcher() -> Dispatcher:
    routers = (session, shell, files, screen, input, clipboard, desktop, a11y)
    return Dispatcher(*(module.router for module in routers))
