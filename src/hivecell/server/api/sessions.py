"""``/sessions``: coding-agent sessions (see ``hivecell.sessions``) and their terminal
WebSocket ``/sessions/{name}/attach``, which carries ``sessions.framing`` frames both ways:
the viewer sends ``stdin``, ``resize`` and ``control``; it receives ``stdout`` and
``control``. A malformed frame closes the connection (1003); the session carries on."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Response, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocketDisconnect

from hivecell.errors import HivecellError
from hivecell.server.api.deps import AUTH, State, get_state
from hivecell.sessions import framing
from hivecell.sessions.framing import BadFrame, FrameType
from hivecell.sessions.link import Link
from hivecell.sessions.service import SessionCreate, SessionService, SessionView

router = APIRouter(tags=["sessions"], dependencies=AUTH)
LOGS_MAX = 4 * 1024 * 1024
ATTACH_TAIL = 64 * 1024
AUDIT_PAGE = 5000
AUDIT_IN_DETAIL = 20


class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=1024 * 1024)
    enter: bool = True


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    into: str | None = Field(None, max_length=250)
    commit: bool = False  # commit pending worktree changes on the session's branch first
    message: str | None = Field(None, max_length=10000)


def _service(state: Any) -> SessionService:
    service: SessionService = state.sessions
    return service


@router.get("/sessions")
async def list_sessions(state: State) -> dict[str, Any]:
    items = await _service(state).list()
    return {"items": [i.model_dump(mode="json") for i in items], "total": len(items)}


@router.post("/sessions", status_code=201)
async def create_session(body: SessionCreate, state: State) -> SessionView:
    with anyio.CancelScope(shield=True):  # a dropped request must not leave half a session
        view = await _service(state).create(body)
    state.hub.publish("session.created", {"name": view.name, "status": view.status})
    return view


@router.get("/sessions/{name}")
async def get_session(name: str, state: State) -> SessionView:
    service = _service(state)
    view = await service.get(name)
    view.audit = await service.audit_tail(name, AUDIT_IN_DETAIL)
    return view


@router.get("/sessions/{name}/audit")
async def session_audit(
    name: str,
    state: State,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE)] = 1000,
) -> dict[str, Any]:
    """Entries with ``seq > after``, oldest first; ask again with ``after=next_after``."""
    items = await _service(state).audit(name, after, limit)
    return {
        "items": [i.model_dump(mode="json") for i in items],
        "next_after": items[-1].seq if items else after,
        "more": len(items) == limit,
    }


@router.get("/sessions/{name}/diff")
async def session_diff(name: str, state: State) -> dict[str, Any]:
    return await _service(state).diff(name)


@router.post("/sessions/{name}/merge")
async def merge_session(name: str, body: MergeBody, state: State) -> dict[str, Any]:
    with anyio.CancelScope(shield=True):  # a dropped request must not stop a merge halfway
        result = await _service(state).merge(
            name, into=body.into, commit=body.commit, message=body.message
        )
    state.hub.publish("session.merged", {"name": name, "into": result["into"]})
    return result


@router.post("/sessions/{name}/send")
async def send_to_session(name: str, body: SendBody, state: State) -> dict[str, Any]:
    await _service(state).send(name, body.text, body.enter)
    return {"name": name, "sent": len(body.text)}


@router.get("/sessions/{name}/logs")
async def session_logs(
    name: str,
    state: State,
    offset: Annotated[int | None, Query(ge=0)] = None,
    tail: Annotated[int, Query(ge=0, le=LOGS_MAX)] = LOGS_MAX,
) -> Response:
    data, next_offset = await _service(state).logs(name, offset, tail)
    return Response(
        data, media_type="application/octet-stream", headers={"X-Next-Offset": str(next_offset)}
    )


@router.post("/sessions/{name}/restart")
async def restart_session(name: str, state: State) -> SessionView:
    return await _service(state).restart(name)


@router.delete("/sessions/{name}")
async def destroy_session(name: str, state: State, force: bool = False) -> dict[str, Any]:
    result = await _service(state).destroy(name, force=force)
    state.hub.publish("session.destroyed", {"name": name})
    return result


@router.websocket("/sessions/{name}/attach")
async def attach(
    websocket: WebSocket,
    name: str,
    offset: Annotated[int | None, Query(ge=0)] = None,
    tail: Annotated[int, Query(ge=0)] = ATTACH_TAIL,
) -> None:
    service = _service(get_state(websocket))
    try:
        await service.spec(name)
        link = await Link.open(service.folder(name))
    except HivecellError as exc:
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    await websocket.accept()
    try:
        await link.send(framing.control({"op": "attach", "offset": offset, "tail": tail}))
        async with anyio.create_task_group() as tg:
            tg.start_soon(_to_viewer, link, websocket, tg.cancel_scope)
            await _from_viewer(link, websocket)
            tg.cancel_scope.cancel()
    finally:
        await link.aclose()


async def _to_viewer(link: Link, websocket: WebSocket, scope: anyio.CancelScope) -> None:
    try:
        while True:
            # The supervisor's frames go out as they came (its header checked): decoding
            # and encoding each again cost two copies per frame on the busiest hop.
            await websocket.send_bytes(await link.receive_raw())
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, HivecellError):
        # The supervisor stopped (destroyed): tell the viewer and end the connection.
        await websocket.close(code=1001, reason="the session ended")
    finally:
        scope.cancel()


async def _from_viewer(link: Link, websocket: WebSocket) -> None:
    try:
        while True:
            message = await websocket.receive_bytes()
            try:
                frame = framing.decode(message)
                if frame.agent != 0:
                    raise BadFrame(f"agent {frame.agent}: a session has one agent, 0", op="frame")
                if frame.type in (FrameType.STDOUT, FrameType.STDERR):
                    raise BadFrame("viewers send stdin, resize or control", op="frame")
                if frame.type is FrameType.CONTROL and frame.control()["op"] != "status":
                    raise BadFrame("viewers may only ask for status", op="frame")
            except BadFrame as exc:
                await websocket.close(code=1003, reason=exc.message[:120])
                return
            await link.send(message)
    except (WebSocketDisconnect, KeyError, RuntimeError):
        return  # the viewer left (a text message counts as leaving: we speak bytes)
