"""Server-wide routes: the kill switch and the dashboard's settings."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Request
from pydantic import ValidationError

from hivecell.server.api.deps import AUTH, State
from hivecell.server.api.intake import validation_error
from hivecell.server.interventions import actor_of
from hivecell.server.settings import (
    Preferences,
    check_output_dir,
    merged,
    save_preferences,
)

Changes = Annotated[dict[str, Any], Body(examples=[{"max_concurrent": 3}])]
router = APIRouter(tags=["server"], dependencies=AUTH)


@router.post("/stop-all")
async def stop_all(state: State, request: Request) -> dict[str, Any]:
    """Cancel every queued and running task (each one's trace records who stopped it)."""
    return {"stopped": await state.manager.stop_all(by=actor_of(request))}


@router.get("/settings")
async def get_settings(state: State) -> Preferences:
    return state.prefs


@router.put("/settings")
async def put_settings(state: State, changes: Changes) -> Preferences:
    """Change some or all settings (nested tables merge); saved to config.toml."""
    try:
        prefs = merged(state.prefs, changes)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if prefs.output_dir:  # checked on every save: the folder may have changed since
        await anyio.to_thread.run_sync(check_output_dir, prefs.output_dir, state.config.home)
    await anyio.to_thread.run_sync(save_preferences, state.config.config_path, prefs)
    state.prefs = prefs
    state.manager.poke()  # a higher limit may start queued tasks now
    state.capacity.changed()  # caps moved: tasks waiting for room look again
    state.pool.poke()  # size, idle time or the default shape may have changed
    return prefs


@router.get("/status")
async def status(state: State) -> dict[str, Any]:
    """Counts for the header bar, and what start-up recovery cleaned up."""
    return {**state.manager.counts(), "event_seq": state.hub.seq, "recovered": state.recovered}
