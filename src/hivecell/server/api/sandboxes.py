"""``/sandboxes``: list, create, remove, and screenshot the desktops."""

from __future__ import annotations

import base64
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.errors import InvalidParams, SandboxError, SandboxNotFound
from hivecell.pool.metrics import SandboxStats
from hivecell.pool.warm import NAME_PREFIX as POOL_PREFIX
from hivecell.protocol.jsonrpc import describe_validation
from hivecell.sandbox.base import NetworkMode, ProviderName, SandboxInfo, SandboxSpec
from hivecell.server.api.deps import AUTH, State
from hivecell.server.errors import Conflict

router = APIRouter(tags=["sandboxes"], dependencies=AUTH)


class SandboxCreate(BaseModel):
    """Unset fields take the sandbox defaults from ``/settings``."""

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(None, ge=320, le=7680)
    height: int | None = Field(None, ge=200, le=4320)
    network: NetworkMode | None = None
    memory_mb: int | None = Field(None, ge=64)
    cpus: float | None = Field(None, gt=0, le=1024)
    disk_mb: int | None = Field(None, ge=32)
    name: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    inbox_writable: bool | None = Field(None, description="/shared/inbox writable inside")
    network_allow: list[str] | None = Field(
        None, description="domains, *.domains and CIDRs it may reach; implies network nat"
    )
    desktop: Literal["full", "minimal"] | None = Field(
        None, description="full: wallpaper, panel, file manager (default); minimal: bare openbox"
    )
    provider: ProviderName | None = Field(
        None, description="local (bubblewrap box, default) or qemu (a VM from a template)"
    )


@router.get("/sandboxes")
async def list_sandboxes(state: State) -> dict[str, Any]:
    items = [view(state, info) for info in await state.provider.list()]
    return {"items": items, "total": len(items)}


@router.post("/sandboxes", status_code=201)
async def create_sandbox(state: State, body: SandboxCreate | None = None) -> dict[str, Any]:
    given = (body or SandboxCreate()).model_dump(exclude_none=True)
    for prefix, owner in (("task-", "task sandboxes"), (POOL_PREFIX, "the warm pool")):
        if str(given.get("name", "")).startswith(prefix):
            raise Conflict(f"names starting with {prefix!r} are reserved for {owner}", op="create")
    if given.get("network_allow"):
        given.setdefault("network", "nat")
    try:
        spec = SandboxSpec.model_validate(state.prefs.sandbox.model_dump() | given)
    except ValidationError as exc:  # e.g. a bad allowlist entry: the caller's input
        raise InvalidParams(describe_validation(exc), op="create_sandbox") from None
    # Over a cap: 429 at once (a person or script retries; tasks wait in line instead).
    async with state.capacity.admitted(spec, wait=False, make_room=state.pool.evict_one):
        with anyio.CancelScope(shield=True):  # a dropped request must not leave a half box
            info = await state.provider.create(spec)
    state.hub.publish("sandbox.created", {"sandbox_id": info.id, "task_id": None})
    return view(state, info)


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, state: State) -> dict[str, Any]:
    return view(state, await state.provider.info(sandbox_id))


@router.get("/sandboxes/{sandbox_id}/network")
async def sandbox_network(sandbox_id: str, state: State) -> dict[str, Any]:
    """A nat sandbox's outbound connections and DNS questions so far."""
    log = await state.provider.network_log(sandbox_id)
    return {"sandbox_id": sandbox_id, "items": [c.model_dump(mode="json") for c in log]}


@router.get("/sandboxes/{sandbox_id}/stats")
async def sandbox_stats(sandbox_id: str, state: State) -> SandboxStats:
    """The latest sample (CPU %, memory, disk, processes, guest round trip); taken now if
    the sampler has none yet, in which case CPU % reads 0 (it needs two samples)."""
    await state.provider.info(sandbox_id)  # unknown ids: 404, even with an old sample
    return state.sampler.latest(sandbox_id) or await state.sampler.sample_now(sandbox_id)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def delete_sandbox(sandbox_id: str, state: State) -> Response:
    await state.provider.info(sandbox_id)  # unknown ids: 404
    task_id = state.manager.task_of_sandbox(sandbox_id)
    if task_id is not None:
        raise Conflict(
            f"sandbox {sandbox_id} runs task {task_id}: cancel the task instead",
            op="destroy",
            context={"id": sandbox_id, "task_id": task_id},
        )
    await state.manager.destroy_sandbox(sandbox_id)
    return Response(status_code=204)


@router.get("/sandboxes/{sandbox_id}/screenshot", response_class=Response)
async def sandbox_screenshot(sandbox_id: str, state: State, missing_ok: bool = False) -> Response:
    """The live desktop; 204 (no picture now) while the sandbox is stopped or going away,
    which a dashboard polling a finishing task's thumbnail meets by design. ``missing_ok``:
    204 also for a sandbox already gone (a thumbnail poll that raced its removal), else 404."""
    try:
        async with await state.provider.connect(sandbox_id) as guest:
            raw = await guest.call("screenshot", {"format": "png"})
    except SandboxNotFound:
        if missing_ok:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        raise
    except SandboxError:  # stopped, or its guest gone mid-request (GuestUnavailable)
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return Response(
        base64.b64decode(raw["data"]), media_type="image/png", headers={"Cache-Control": "no-store"}
    )


def view(state: State, info: SandboxInfo) -> dict[str, Any]:
    task_id = state.manager.task_of_sandbox(info.id)
    busy = "error" if info.status == "error" else ("busy" if task_id else "idle")
    warm = state.pool.is_warm(info.id)
    if not task_id and not warm and state.pool.is_pools(info):
        busy = "starting"  # the pool's, booting (or going away): not ready to look at
    view = info.model_dump(mode="json", exclude={"endpoint"})
    return view | {"task_id": task_id, "activity": busy, "pool": warm}
