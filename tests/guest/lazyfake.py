"""A tool module for tests/guest/test_lazy_tools.py, imported by the dispatcher on first call."""

from __future__ import annotations

from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.protocol import methods as m

router = Router()


@router.method("ping")
async def ping(p: m.Empty, ctx: CallContext) -> m.PingResult:
    return m.PingResult(time=0.0)
