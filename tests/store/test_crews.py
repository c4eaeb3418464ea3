"""Crews in the store (SQLite, and postgres when one is given), and after a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.crew import records
from hivecell.crew.models import Crew, CrewRequest, Member, Todo
from hivecell.store import CrewNotFound, TaskStore
from tests.store.conftest import DEAD_OWNER, OTHER_HOST_OWNER

pytestmark = pytest.mark.anyio


async def test_a_crew_is_kept_whole_and_listed_newest_first(db_url: str, tmp_path: Path) -> None:
    async with TaskStore(db_url) as store:
        first = await records.new_crew(
            store, tmp_path, CrewRequest(goal="one", agents=2), model="m", provider="p"
        )
        second = await records.new_crew(
            store, tmp_path, CrewRequest(goal="two"), model="m", provider="p"
        )
        first.todos = [Todo(id="t1", title="do it", status="done", result="ok")]
        first.status = "completed"
        await store.save_crew(first.id, first.status, first.model_dump(mode="json"))
        assert await records.get_crew(store, first.id) == first
        assert [c.id for c in await records.list_crews(store)] == [second.id, first.id]
        assert first.shared_dir.is_dir() and first.outputs_dir.is_dir()
        with pytest.raises(CrewNotFound, match="no crew 'c-nope'"):
            await records.get_crew(store, "c-nope")
        with pytest.raises(CrewNotFound):
            await store.save_crew("c-nope", "running", {})


async def test_a_crew_whose_process_died_says_so_and_what_it_finished(
    db_url: str, tmp_path: Path
) -> None:
    crashed = Crew(
        goal="g",
        agents=2,
        status="running",
        todos=[
            Todo(id="a", title="a", status="done", result="fine"),
            Todo(id="b", title="b", status="running", agent="bo"),
            Todo(id="c", title="c"),
        ],
        members=[Member(name="ada"), Member(name="bo", todo="b")],
    )
    remote = Crew(goal="elsewhere", agents=1, status="running")
    for owner, crew in ((DEAD_OWNER, crashed), (OTHER_HOST_OWNER, remote)):
        async with TaskStore(db_url, owner=owner) as other:
            await other.create_crew(crew.id, crew.status, crew.model_dump(mode="json"))
    async with TaskStore(db_url) as store:
        assert await records.recover(store) == [crashed.id]
        after = await records.get_crew(store, crashed.id)
        assert after.status == "partially_completed" and "interrupted" in str(after.error)
        assert [t.status for t in after.todos] == ["done", "cancelled", "cancelled"]
        assert after.member("bo").todo is None and after.finished_at is not None
        assert (await records.get_crew(store, remote.id)).status == "running"  # not ours to end
        assert await records.recover(store) == []  # once
