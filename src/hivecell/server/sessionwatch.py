"""``session.status`` events: which coding-agent session needs its person, pushed to every
open dashboard.

A session's status is computed by its supervisor when asked (the rendered screen, whether the
agent runs, and how long ago it last wrote, so ``working`` turns ``idle`` after a quiet spell
with no output to announce it). So the server asks every session each ``INTERVAL`` while
somebody listens on ``/events`` and publishes the ones that changed; with no listener it asks
nobody. The first round after start only learns the current states: a restarted server does
not replay old changes. A session first seen later (once its supervisor answers) is
published with ``previous: null``.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import TaskStatus

from hivecell.errors import HivecellError
from hivecell.server.events import EventHub
from hivecell.sessions.service import SessionService, SessionView

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds between two rounds: a person notices a waiting agent within it


class SessionWatch:
    def __init__(self, service: SessionService, hub: EventHub, interval: float = INTERVAL) -> None:
        self.service = service
        self.hub = hub
        self.interval = interval
        self.known: dict[str, str] | None = None  # name -> status; None until the first round

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.hub.subscribers or self.known is None:
                await self.round()
            await anyio.sleep(self.interval)

    async def round(self) -> None:
        known = self.known
        # A new folder whose supervisor does not answer yet is a session being created (its
        # spec is written before the supervisor starts), not one that exited: wait for it.
        views = [
            view
            for view in await self._views()
            if known is None or view.name in known or view.supervisor == "running"
        ]
        now: dict[str, str] = {view.name: view.status for view in views}
        if known is not None:
            for view in views:
                previous = known.get(view.name)
                if previous != view.status:
                    self.hub.publish(
                        "session.status",
                        {
                            "name": view.name,
                            "agent": view.agent,
                            "status": view.status,
                            "previous": previous,
                        },
                    )
        self.known = now

    async def _views(self) -> list[SessionView]:
        """Every session that can be read; one that cannot (a broken folder, a supervisor
        gone mid-answer) is left out of this round, never allowed to stop the server."""
        views: list[SessionView] = []
        try:
            names = await self.service.names()
        except OSError as exc:  # the sessions folder changed under the listing
            log.debug("sessions not listed this round: %s", exc)
            return views
        for name in names:
            try:
                views.append(await self.service.get(name))
            except (HivecellError, OSError, TimeoutError) as exc:
                log.debug("session %s skipped this round: %s", name, exc)
        return views
