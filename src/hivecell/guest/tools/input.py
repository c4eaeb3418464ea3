"""Guest tools: input (handlers registered on ``router``)."""

from __future__ import annotations

from hivecell.guest.dispatch import Router

router = Router()
