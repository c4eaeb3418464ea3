"""``/tasks``: create (JSON or multipart with inbox files), list, read and control tasks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.control import Extension
from hivecell.server.api.deps import AUTH, State
from hivecell.server.api.intake import TaskCreate, create_task, retry_task
from hivecell.server.interventions import Note, actor_of
from hivecell.server.manager import public_record
from hivecell.store import TaskStatus

router = APIRouter(tags=["tasks"], dependencies=AUTH)


class Text(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=20_000)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: str = Field(min_length=1, max_length=20_000)


class Denial(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = ""


@router.post(
    "/tasks",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": TaskCreate.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object"}},
            }
        }
    },
)
async def create(request: Request, state: State) -> dict[str, Any]:
    """JSON ``TaskCreate``, or multipart with the same fields plus ``files`` for the inbox."""
    record = await create_task(request, state)
    return public_record(record, state.manager.live(record.id))


@router.get("/tasks")
async def list_tasks(
    state: State,
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    search: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    store = state.store
    records = await store.list(status=status, search=search, limit=limit, offset=offset)
    total = await store.count(status=status, search=search)
    items = [public_record(r, state.manager.live(r.id)) for r in records]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/tasks/{task_id}")
async def get_task(task_id: str, state: State) -> dict[str, Any]:
    record = await state.store.get(task_id)
    return public_record(record, state.manager.live(task_id))


@router.post("/tasks/{task_id}/instruct")
async def instruct(task_id: str, body: Text, state: State, request: Request) -> dict[str, Any]:
    return await _control(state, request, task_id, "instruct", body.text)


@router.post("/tasks/{task_id}/answer")
async def answer(task_id: str, body: Answer, state: State, request: Request) -> dict[str, Any]:
    return await _control(state, request, task_id, "answer", body.answer)


@router.post("/tasks/{task_id}/deny")
async def deny(
    task_id: str, state: State, request: Request, body: Denial | None = None
) -> dict[str, Any]:
    return await _control(state, request, task_id, "deny", body.reason if body else "")


class Resume(Extension):
    """More room for a task paused at a limit, and an optional note for the agent."""

    text: str | None = Field(None, min_length=1, max_length=20_000)


@router.post("/tasks/{task_id}/resume")
async def resume(
    task_id: str, state: State, request: Request, body: Resume | None = None
) -> dict[str, Any]:
    """Resume a paused task. At a limit (``limit`` in the task view) send more of what it
    ran out of: ``extra_time_s``, ``extra_steps``, ``extra_cost_usd`` or ``extra_tokens``."""
    extension = Extension.model_validate(body.model_dump(exclude={"text"})) if body else None
    text = body.text or "" if body else ""
    by = actor_of(request)
    record = await state.manager.control(task_id, "resume", text, extension, by=by)
    return public_record(record, state.manager.live(task_id))


@router.post("/tasks/{task_id}/retry", status_code=201)
async def retry(task_id: str, state: State, request: Request) -> dict[str, Any]:
    """Re-queue an interrupted, failed or cancelled task as a new task (``retry_of`` links
    it to the original) on a fresh sandbox with the same settings and inbox files."""
    original = await state.store.get(task_id)
    record = await retry_task(state, original)
    note = Note("retry", actor_of(request), {"task_id": record.id})
    await state.manager.note_ended(original, note)
    return public_record(record, state.manager.live(record.id))


Action = Literal["pause", "cancel", "approve", "takeover", "handback"]


@router.post("/tasks/{task_id}/{action}")
async def control(task_id: str, action: Action, state: State, request: Request) -> dict[str, Any]:
    """pause | cancel | approve | takeover (pause for a person) | handback (resume)."""
    return await _control(state, request, task_id, action)


async def _control(
    state: State, request: Request, task_id: str, action: str, text: str = ""
) -> dict[str, Any]:
    """Apply an action; the trace records it with who asked (``interventions.actor_of``)."""
    record = await state.manager.control(task_id, action, text, by=actor_of(request))
    return public_record(record, state.manager.live(task_id))
