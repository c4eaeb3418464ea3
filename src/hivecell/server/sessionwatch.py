"""``session.status`` events: which coding-agent session needs its person, pushed to every
open dashboard.

A session's status is computed by its supervisor when asked (the rendered screen, whether the
agent runs, and how long ago it last wrote, so ``working`` turns ``idle`` after a quiet spell
with no output to announce it). So the server asks every session each ``INTERVAL`` while
somebody listens on ``/events`` and publishes the ones that changed; with no listener it asks
nobody. The first round after start only learns the current states: a restarted server does
not replay old changes. A session first seen later (once its supervisor answers) is
published with ``previous: null``.

The same rounds publish ``session.audit`` (``name``) when a session's audit log grew, so an
open Audit panel fetches the new entries instead of polling for them. The log's size and
inode say so without reading it; an entry is one ``write`` (see ``sessions.audit``), so a
grown file already holds the whole line a reader is sent for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from hivecell.errors import HivecellError
from hivecell.server.events import EventHub
from hivecell.sessions.audit import AuditLog
from hivecell.sessions.service import SessionService, SessionView

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds between two rounds: a person notices a waiting agent within it


class SessionWatch:
    def __init__(self, service: SessionService, hub: EventHub, interval: float = INTERVAL) -> None:
        self.service = service
        self.hub = hub
        self.interval = interval
        self.known: dict[str, str] | None = None  # name -> status; None until the first round
        self.audits: dict[str, tuple[int, int] | None] = {}  # name -> audit log (inode, size)

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
        await self._audits(views, first=known is None)

    async def _audits(self, views: list[SessionView], *, first: bool) -> None:
        """``session.audit`` for each session whose audit log changed since the last round."""
        folders = {view.name: self.service.folder(view.name) for view in views}
        now = await anyio.to_thread.run_sync(_audit_marks, folders)
        if not first:
            for name, mark in now.items():
                if mark is not None and mark != self.audits.get(name):
                    self.hub.publish("session.audit", {"name": name})
        self.audits = now

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


def _audit_marks(folders: dict[str, Path]) -> dict[str, tuple[int, int] | None]:
    """(inode, size) of each session's current audit file; None when it has none yet."""
    marks: dict[str, tuple[int, int] | None] = {}
    for name, folder in folders.items():
        try:
            st = AuditLog(folder).path.stat()
        except OSError:  # no entry yet, or the folder went away meanwhile
            marks[name] = None
        else:
            marks[name] = (st.st_ino, st.st_size)
    return marks
