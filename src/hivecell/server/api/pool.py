"""``/pool``: the warm sandboxes, and the capacity every sandbox is admitted against."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hivecell.server.api.deps import AUTH, State

router = APIRouter(tags=["sandboxes"], dependencies=AUTH)


@router.get("/pool")
async def get_pool(state: State) -> dict[str, Any]:
    """Warm sandboxes per shape, and the caps with what is in use now."""
    caps = state.capacity.caps()
    usage = await state.capacity.usage()
    capacity = {
        "caps": caps.model_dump(),
        "used": usage.model_dump(),
        "waiting": state.capacity.waiting,
        "host": {"memory_mb": state.host.memory_mb, "cpus": state.host.cpus},
    }
    return state.pool.view() | {"capacity": capacity}
