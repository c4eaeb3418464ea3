"""``/sandboxes/{id}/snapshots``, ``/restore`` and ``/fork``: a VM's saved moments.

Only VM sandboxes have them (a local box answers with the config error that says so). A
sandbox that runs a task is neither rewound nor forked under it: the task's agent would
be talking to a desktop that changed behind its back (cancel the task first).
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from hivecell.errors import ConfigError
from hivecell.sandbox.base import SnapshotInfo, Snapshotting
from hivecell.server.api.deps import AUTH, State
from hivecell.server.api.sandboxes import view
from hivecell.server.errors import Conflict

router = APIRouter(tags=["sandboxes"], dependencies=AUTH)


class SnapshotName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@router.get("/sandboxes/{sandbox_id}/snapshots")
async def list_snapshots(sandbox_id: str, state: State) -> dict[str, Any]:
    found = await _snapshotting(state, "snapshots").snapshots(sandbox_id)
    return {"items": [one.model_dump(mode="json") for one in found], "total": len(found)}


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def take_snapshot(sandbox_id: str, body: SnapshotName, state: State) -> SnapshotInfo:
    with anyio.CancelScope(shield=True):  # a dropped request must not leave it half-written
        made = await _snapshotting(state, "snapshot").snapshot(sandbox_id, body.name)
    return made


@router.delete("/sandboxes/{sandbox_id}/snapshots/{name}", status_code=204)
async def delete_snapshot(sandbox_id: str, name: str, state: State) -> Response:
    await _snapshotting(state, "delete_snapshot").delete_snapshot(sandbox_id, name)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/restore")
async def restore(sandbox_id: str, body: SnapshotName, state: State) -> dict[str, Any]:
    _not_in_a_task(state, sandbox_id, "restore")
    with anyio.CancelScope(shield=True):
        info = await _snapshotting(state, "restore").restore(sandbox_id, body.name)
    state.hub.publish("sandbox.restored", {"sandbox_id": sandbox_id, "snapshot": body.name})
    return view(state, info)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork(sandbox_id: str, state: State) -> dict[str, Any]:
    _not_in_a_task(state, sandbox_id, "fork")
    parent = await state.provider.info(sandbox_id)
    # a fork is one more VM: the same caps as POST /sandboxes (429 at once when over)
    async with state.capacity.admitted(parent.spec, wait=False, make_room=state.pool.evict_one):
        with anyio.CancelScope(shield=True):
            info = await _snapshotting(state, "fork").fork(sandbox_id)
    state.hub.publish("sandbox.created", {"sandbox_id": info.id, "task_id": None})
    return view(state, info)


def _snapshotting(state: State, op: str) -> Snapshotting:
    if not isinstance(state.provider, Snapshotting):
        raise ConfigError("this server's sandbox provider cannot take snapshots", op=op)
    return state.provider


def _not_in_a_task(state: State, sandbox_id: str, op: str) -> None:
    task_id = state.manager.task_of_sandbox(sandbox_id)
    if task_id is not None:
        raise Conflict(
            f"sandbox {sandbox_id} runs task {task_id}: cancel the task before you {op} it",
            op=op,
            context={"id": sandbox_id, "task_id": task_id},
        )
