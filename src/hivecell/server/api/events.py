"""``/events``: the live event stream over a WebSocket (see ``hivecell.server.events``)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from hivecell.server.api.deps import AUTH, get_state
from hivecell.server.events import EventsConnection

router = APIRouter(tags=["events"], dependencies=AUTH)


@router.websocket("/events")
async def events(websocket: WebSocket) -> None:
    await EventsConnection(websocket, get_state(websocket).hub).run()
