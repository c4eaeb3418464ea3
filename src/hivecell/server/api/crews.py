"""``/crews``: one goal fanned out to several agents (see ``hivecell.crew``).

``POST /crews`` takes JSON or multipart (the same fields plus ``files``, copied into every
agent's inbox). The crew plans, then its agents take TODOs as ordinary tasks, which the task
routes show and control like any other.
"""

from __future__ import annotations

import shutil
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hivecell.agent.llm import make_model, require_price
from hivecell.crew import records
from hivecell.crew.models import MAX_AGENTS, Crew, CrewRequest, Note, Todo
from hivecell.crew.runner import CrewRunner
from hivecell.crew.whiteboard import TodoEdit
from hivecell.sandbox import netpolicy
from hivecell.server.api.deps import AUTH, State
from hivecell.server.api.intake import (
    TaskCreate,
    build_task_request,
    file_name,
    move_into_place,
    read_body,
    resolve_llm,
    stage_uploads,
    validation_error,
)
from hivecell.server.app import ServerState
from hivecell.server.crewdesk import ServerDesk
from hivecell.server.errors import Conflict
from hivecell.server.manager import spec_for

router = APIRouter(tags=["crews"], dependencies=AUTH)


class CrewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str = Field(min_length=1, max_length=20_000)
    agents: int = Field(3, ge=1, le=MAX_AGENTS)
    review_plan: bool = Field(False, description="wait for POST /crews/{id}/start after planning")
    max_cost_usd: float | None = Field(None, gt=0, description="budget of the whole crew")
    provider: str | None = None
    model: str | None = None
    max_steps: int | None = Field(None, ge=1, le=10_000, description="per TODO")
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="per TODO")
    max_tokens: int | None = Field(None, ge=1, description="per TODO")
    network: Literal["offline", "nat"] | None = None
    network_allow: list[str] = Field(default_factory=list)
    disabled_tools: list[str] = Field(default_factory=list)
    approve_tools: list[str] | None = None

    @field_validator("network_allow")
    @classmethod
    def _allow_entries(cls, entries: list[str]) -> list[str]:
        return netpolicy.normalize(entries)

    def as_task(self) -> TaskCreate:
        """The agents' task settings, checked like a task's."""
        fields = self.model_dump(exclude={"goal", "agents", "review_plan", "max_cost_usd"})
        return TaskCreate.model_validate({"description": self.goal, **fields})


class NoteText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


@router.post(
    "/crews",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": CrewCreate.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object"}},
            }
        }
    },
)
async def create(request: Request, state: State) -> dict[str, Any]:
    fields, uploads = await read_body(request)
    try:
        body = CrewCreate.model_validate(fields)
        task = body.as_task()
    except ValidationError as exc:
        raise validation_error(exc) from None
    task_request = build_task_request(task, state)
    llm = await anyio.to_thread.run_sync(resolve_llm, state, task, task_request.settings)
    if body.max_cost_usd is not None:  # never a silent $0 against a cost budget
        require_price(llm.model, llm.prices, op="create_crew")
    inputs = state.config.home / "inputs"
    names = [file_name(upload) for upload in uploads]
    staging = await stage_uploads(inputs, names, uploads, state.config.max_upload_bytes)
    try:
        crew_request = CrewRequest(
            goal=body.goal,
            agents=body.agents,
            settings=task_request.settings,
            network=task_request.network,
            network_allow=task_request.network_allow,
            resolution=task_request.resolution,
            max_cost_usd=body.max_cost_usd,
        )
        crew = await records.new_crew(
            state.store, state.config.home, crew_request, model=llm.model, provider=llm.name
        )
        files = await move_into_place(staging, names, inputs / crew.id)
    finally:
        if staging is not None and await anyio.Path(staging).exists():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, staging, True)
    crew.files = names
    desk = ServerDesk(
        state, crew.id, llm=llm, spec=spec_for(state.prefs, task_request), files=files
    )
    client = make_model(llm)  # the plan and the summary; closed once the crew ends
    runner = CrewRunner(
        crew,
        settings=task_request.settings,
        desk=desk,
        llm=client,
        store=state.store,
        on_event=state.hub.publish,
        limits=state.config.transfer_limits,
        review_plan=body.review_plan,
    )
    state.crews.start(runner, cleanup=client.aclose)
    return _public(state, crew)


@router.get("/crews")
async def list_crews(
    state: State,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    crews = await records.list_crews(state.store, limit, offset)
    items = [_public(state, _newest(state, c)) for c in crews]
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/crews/{crew_id}")
async def get_crew(crew_id: str, state: State) -> dict[str, Any]:
    return _public(state, await _crew(state, crew_id))


@router.post("/crews/{crew_id}/cancel")
async def cancel(crew_id: str, state: State) -> dict[str, Any]:
    runner = await _live(state, crew_id, "cancel")
    runner.cancel()
    return _public(state, runner.crew)


@router.post("/crews/{crew_id}/start")
async def start(crew_id: str, state: State) -> dict[str, Any]:
    runner = await _live(state, crew_id, "start")
    if not runner.waiting_to_start:
        raise Conflict(f"crew {crew_id} has already started", op="start", context={"id": crew_id})
    runner.start()
    return _public(state, runner.crew)


@router.post("/crews/{crew_id}/todos", status_code=201)
async def add_todo(crew_id: str, body: Todo, state: State) -> dict[str, Any]:
    runner = await _live(state, crew_id, "add_todo")
    await runner.add_todo(body)
    return _public(state, runner.crew)


@router.patch("/crews/{crew_id}/todos/{todo_id}")
async def edit_todo(crew_id: str, todo_id: str, body: TodoEdit, state: State) -> dict[str, Any]:
    runner = await _live(state, crew_id, "edit_todo")
    await runner.edit_todo(todo_id, body)
    return _public(state, runner.crew)


@router.post("/crews/{crew_id}/notes", status_code=201)
async def note(crew_id: str, body: NoteText, state: State) -> dict[str, Any]:
    runner = await _live(state, crew_id, "note")
    await runner.note("person", body.text)
    return _public(state, runner.crew)


async def _crew(state: ServerState, crew_id: str) -> Crew:
    runner = state.crews.get(crew_id)
    return runner.crew if runner is not None else await records.get_crew(state.store, crew_id)


def _newest(state: ServerState, stored: Crew) -> Crew:
    """A live crew as its runner has it now (the stored copy trails it between saves)."""
    runner = state.crews.get(stored.id)
    return runner.crew if runner is not None else stored


async def _live(state: ServerState, crew_id: str, op: str) -> CrewRunner:
    runner = state.crews.get(crew_id)
    if runner is None:
        crew = await records.get_crew(state.store, crew_id)  # unknown ids: 404
        raise Conflict(
            f"crew {crew_id} is {crew.status}: it cannot change now",
            op=op,
            context={"id": crew_id, "status": crew.status},
        )
    return runner


def _public(state: ServerState, crew: Crew) -> dict[str, Any]:
    runner = state.crews.get(crew.id)
    return crew.model_dump(mode="json") | {
        "outputs_dir": str(crew.outputs_dir),
        "live": runner is not None,
        "waiting_to_start": bool(runner and runner.waiting_to_start),
    }


__all__ = ["Note", "router"]
