"""Crews in the store: made, read, listed, and set straight after a restart."""

from __future__ import annotations

from pathlib import Path

import anyio

from hivecell.crew.models import ACTIVE, Crew, CrewRequest, now
from hivecell.sandbox.base import SandboxProvider
from hivecell.store import CrewNotFound, TaskStore

DESKTOP_PREFIX = "crew-"  # crew-<crew id>-<agent>: a restart finds whose desktop it was

INTERRUPTED = "interrupted: the process running this crew stopped before it ended"


async def new_crew(
    store: TaskStore, home: Path, request: CrewRequest, *, model: str, provider: str
) -> Crew:
    """Record a crew (status ``planning``) with its folder ``$HIVECELL_HOME/crews/<id>``."""
    crew = Crew(
        goal=request.goal,
        agents=request.agents,
        model=model or None,
        provider=provider or None,
        max_cost_usd=request.max_cost_usd,
        files=[path.name for path in request.files],
    )
    crew.folder = str(home / "crews" / crew.id)
    for sub in (crew.shared_dir, crew.outputs_dir):
        await anyio.Path(sub).mkdir(parents=True, exist_ok=True)
    await store.create_crew(crew.id, crew.status, crew.model_dump(mode="json"))
    return crew


async def get_crew(store: TaskStore, crew_id: str) -> Crew:
    return Crew.model_validate(await store.get_crew(crew_id))


async def list_crews(store: TaskStore, limit: int = 50, offset: int = 0) -> list[Crew]:
    return [Crew.model_validate(doc) for doc in await store.list_crews(limit, offset)]


async def recover(store: TaskStore) -> list[str]:
    """At start-up: crews whose process died say so (their TODOs that were running or
    pending are cancelled, with why); returns their ids. Their desktops are removed by the
    caller, which knows the provider."""
    ended = []
    for doc in await store.orphaned_crews(ACTIVE):
        crew = Crew.model_validate(doc)
        for todo in crew.todos:
            if todo.status in ("pending", "running"):
                todo.status, todo.result = "cancelled", f"not finished: {INTERRUPTED}"
        for member in crew.members:
            member.todo = None
        done = any(todo.status == "done" for todo in crew.todos)
        crew.status = "partially_completed" if done else "failed"
        crew.error, crew.finished_at = INTERRUPTED, now()
        await store.save_crew(crew.id, crew.status, crew.model_dump(mode="json"))
        ended.append(crew.id)
    return ended


async def remove_orphan_desktops(store: TaskStore, provider: SandboxProvider) -> list[str]:
    """At start-up, after ``recover``: remove the desktops of crews that no longer run (a
    crew of another live process sharing this home keeps its own)."""
    removed = []
    for info in await provider.list():
        name = info.spec.name or ""
        if not name.startswith(DESKTOP_PREFIX):
            continue
        crew_id = "-".join(name.split("-")[1:3])  # crew-c-<hex>-<agent>
        try:
            running = (await store.get_crew(crew_id)).get("status") in ACTIVE
        except CrewNotFound:
            running = False
        if not running:
            await provider.destroy(info.id)
            removed.append(info.id)
    return removed
