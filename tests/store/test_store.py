from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from hivecell.errors import InvalidParams
from hivecell.store import (
    InvalidTransition,
    StoreClosed,
    TaskNotFound,
    TaskRecord,
    TaskSettings,
    TaskStatus,
    TaskStore,
)
from tests.store.conftest import DEAD_OWNER, OTHER_HOST_OWNER

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def full_record() -> TaskRecord:
    return TaskRecord(
        description="Book a flight to Lisbon",
        model="claude-sonnet",
        provider="anthropic",
        sandbox_id="sb-1",
        trace_dir="/traces/t",
        output_dir="/out/t",
        artifacts=["report.pdf"],
        settings=TaskSettings(
            max_steps=30, timeout_s=600, network="offline", disabled_tools=["shell"]
        ),
    )


async def test_create_get_roundtrip(store: TaskStore) -> None:
    created = await store.create_task(full_record())
    assert created.id.startswith("t-") and len(created.id) == 12
    fetched = await store.get(created.id)
    assert fetched == created
    assert fetched.owner == store.owner
    assert fetched.created_at.tzinfo is not None
    assert fetched.settings.disabled_tools == ["shell"]


async def test_settings_keep_unknown_keys(store: TaskStore) -> None:
    record = TaskRecord(description="x", settings=TaskSettings.model_validate({"vnc": True}))
    await store.create_task(record)
    assert (await store.get(record.id)).settings.model_dump()["vnc"] is True


async def test_get_unknown_task(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound) as info:
        await store.get("t-0000000000")
    assert info.value.code == "task_not_found"


async def test_duplicate_id_rejected(store: TaskStore) -> None:
    record = await store.create_task(TaskRecord(description="once"))
    with pytest.raises(InvalidParams):
        await store.create_task(TaskRecord(id=record.id, description="twice"))


async def test_update_sets_result_fields(store: TaskStore) -> None:
    record = await store.create_task(TaskRecord(description="d"))
    updated = await store.update(
        record.id, summary="done", success=True, artifacts=["a.txt"], settings={"max_steps": 5}
    )
    assert updated.summary == "done" and updated.success is True
    assert updated.artifacts == ["a.txt"]
    assert updated.settings.max_steps == 5
    assert await store.get(record.id) == updated


@pytest.mark.parametrize(
    "fields",
    [{"nonsense": 1}, {"id": "t-other"}, {"created_at": T0}, {"status": "exploded"}, {"steps": -1}],
)
async def test_update_rejects_bad_fields(store: TaskStore, fields: dict[str, object]) -> None:
    record = await store.create_task(TaskRecord(description="d"))
    with pytest.raises(InvalidParams):
        await store.update(record.id, **fields)
    assert await store.get(record.id) == record


async def test_update_unknown_task(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound):
        await store.update("t-0000000000", summary="x")


async def test_status_changes_stamp_times(store: TaskStore) -> None:
    record = await store.create_task(TaskRecord(description="d"))
    assert record.started_at is None
    running = await store.update(record.id, status=TaskStatus.RUNNING)
    assert running.started_at is not None and running.finished_at is None
    paused = await store.update(record.id, status="paused")
    resumed = await store.update(record.id, status="running")
    assert paused.started_at == resumed.started_at == running.started_at
    done = await store.update(record.id, status="completed", success=True)
    assert done.finished_at is not None and done.finished_at >= running.started_at


async def test_explicit_times_win(store: TaskStore) -> None:
    record = await store.create_task(TaskRecord(description="d", created_at=T0))
    updated = await store.update(
        record.id, status="failed", started_at=T0, finished_at=T0 + timedelta(seconds=5)
    )
    assert updated.started_at == T0
    assert updated.finished_at == T0 + timedelta(seconds=5)
    assert updated.created_at == T0


async def test_terminal_status_is_final(store: TaskStore) -> None:
    record = await store.create_task(TaskRecord(description="d", status="running"))
    done = await store.update(record.id, status="cancelled")
    with pytest.raises(InvalidTransition):
        await store.update(record.id, status="running")
    again = await store.update(record.id, status="cancelled", summary="stopped by user")
    assert again.status == TaskStatus.CANCELLED and again.finished_at == done.finished_at
    assert (await store.get(record.id)).summary == "stopped by user"


async def test_interrupted_task_can_resume(store: TaskStore) -> None:
    record = await store.create_task(TaskRecord(description="d", status="interrupted"))
    resumed = await store.update(record.id, status="running")
    assert resumed.status == TaskStatus.RUNNING and resumed.finished_at is None


async def test_add_usage_accumulates(store: TaskStore) -> None:
    record = await store.create_task(TaskRecord(description="d"))
    await store.add_usage(record.id, steps=1, prompt_tokens=100, completion_tokens=7, cost_usd=0.5)
    total = await store.add_usage(record.id, steps=1, prompt_tokens=50, cost_usd=0.25)
    assert (total.steps, total.prompt_tokens, total.completion_tokens) == (2, 150, 7)
    assert total.cost_usd == pytest.approx(0.75)
    with pytest.raises(InvalidParams):
        await store.add_usage(record.id, steps=-1)


async def test_list_newest_first_with_paging(store: TaskStore) -> None:
    ids = []
    for minute in range(7):
        created_at = T0 + timedelta(minutes=minute)
        record = TaskRecord(description=f"task {minute}", created_at=created_at)
        ids.append((await store.create_task(record)).id)
    newest_first = list(reversed(ids))
    assert [r.id for r in await store.list()] == newest_first
    assert [r.id for r in await store.list(limit=3)] == newest_first[:3]
    assert [r.id for r in await store.list(limit=3, offset=3)] == newest_first[3:6]
    assert [r.id for r in await store.list(limit=3, offset=6)] == newest_first[6:]
    assert await store.list(offset=10) == []
    with pytest.raises(InvalidParams):
        await store.list(limit=-1)


async def test_same_timestamp_keeps_insertion_order(store: TaskStore) -> None:
    first = await store.create_task(TaskRecord(description="a", created_at=T0))
    second = await store.create_task(TaskRecord(description="b", created_at=T0))
    assert [r.id for r in await store.list()] == [second.id, first.id]


async def test_list_filters_by_status_and_search(store: TaskStore) -> None:
    await store.create_task(TaskRecord(description="Download the INVOICE", status="completed"))
    await store.create_task(TaskRecord(description="print invoice 100%", status="failed"))
    await store.create_task(TaskRecord(description="rename files", status="completed"))
    assert len(await store.list(status="completed")) == 2
    assert len(await store.list(status=["completed", TaskStatus.FAILED])) == 3
    assert {r.status for r in await store.list(search="invoice")} == {"completed", "failed"}
    assert len(await store.list(status="failed", search="Invoice")) == 1
    # LIKE wildcards in the search text are literal characters.
    assert [r.description for r in await store.list(search="100%")] == ["print invoice 100%"]
    assert await store.list(search="_") == []
    assert await store.count(search="invoice") == 2
    assert await store.count() == 3
    with pytest.raises(InvalidParams):
        await store.list(status="sleeping")


async def test_mark_interrupted_takes_dead_owners_tasks(db_url: str) -> None:
    async with TaskStore(db_url, owner=DEAD_OWNER) as crashed:
        active = {
            status: (await crashed.create_task(TaskRecord(description=status, status=status))).id
            for status in ("queued", "running", "paused", "waiting_for_user")
        }
        done = await crashed.create_task(TaskRecord(description="done", status="completed"))
    async with TaskStore(db_url) as restarted:
        assert sorted(await restarted.mark_interrupted()) == sorted(active.values())
        for task_id in active.values():
            task = await restarted.get(task_id)
            assert task.status == TaskStatus.INTERRUPTED
            assert task.finished_at is not None and task.error and "interrupted" in task.error
        assert (await restarted.get(done.id)).status == TaskStatus.COMPLETED
        assert await restarted.mark_interrupted() == []


async def test_mark_interrupted_spares_live_and_remote_owners(db_url: str) -> None:
    async with TaskStore(db_url, owner=OTHER_HOST_OWNER) as remote:
        far = await remote.create_task(TaskRecord(description="remote", status="running"))
    async with TaskStore(db_url) as live:
        mine = await live.create_task(TaskRecord(description="mine", status="running"))
        assert await live.mark_interrupted() == []
        assert (await live.get(mine.id)).status == TaskStatus.RUNNING
        assert sorted(await live.mark_interrupted(all_owners=True)) == sorted([far.id, mine.id])
        assert (await live.get(far.id)).status == TaskStatus.INTERRUPTED


async def test_mark_interrupted_can_keep_queued(db_url: str) -> None:
    async with TaskStore(db_url, owner=DEAD_OWNER) as crashed:
        queued = await crashed.create_task(TaskRecord(description="q"))
        running = await crashed.create_task(TaskRecord(description="r", status="running"))
    async with TaskStore(db_url) as restarted:
        assert await restarted.mark_interrupted(include_queued=False) == [running.id]
        assert (await restarted.get(queued.id)).status == TaskStatus.QUEUED


async def test_running_update_takes_ownership(db_url: str) -> None:
    async with TaskStore(db_url, owner=DEAD_OWNER) as submitter:
        record = await submitter.create_task(TaskRecord(description="d"))
    async with TaskStore(db_url) as runner:
        assert (await runner.update(record.id, status="running")).owner == runner.owner
        assert await runner.mark_interrupted() == []


async def test_second_store_sees_rows(db_url: str) -> None:
    async with TaskStore(db_url) as first, TaskStore(db_url) as second:
        record = await first.create_task(TaskRecord(description="shared"))
        assert await second.get(record.id) == record
        await second.update(record.id, status="running")
        assert (await first.get(record.id)).status == TaskStatus.RUNNING


async def test_open_is_idempotent(db_url: str) -> None:
    store = TaskStore(db_url)
    await store.open()
    await store.open()
    record = await store.create_task(TaskRecord(description="kept"))
    await store.close()
    async with TaskStore(db_url) as reopened:
        assert await reopened.get(record.id) == record


async def test_closed_store_raises(db_url: str) -> None:
    store = TaskStore(db_url)
    with pytest.raises(StoreClosed):
        await store.get("t-0000000000")
    async with store:
        pass
    with pytest.raises(StoreClosed):
        await store.list()


async def test_concurrent_writers_lose_no_updates(db_url: str) -> None:
    async with TaskStore(db_url) as first, TaskStore(db_url) as second:
        record = await first.create_task(TaskRecord(description="contended", status="running"))

        async def hammer(store: TaskStore, field: str) -> None:
            for i in range(1, 51):
                await store.add_usage(record.id, steps=1, prompt_tokens=10)
                await store.update(record.id, **{field: f"{field} {i}"})

        async with anyio.create_task_group() as group:
            group.start_soon(hammer, first, "summary")
            group.start_soon(hammer, second, "error")
        final = await first.get(record.id)
    assert final.steps == 100 and final.prompt_tokens == 1000
    assert final.summary == "summary 50" and final.error == "error 50"


async def test_writes_cancelled_midway_leave_the_database_writable(db_url: str) -> None:
    """Tasks cancelled in the middle of store writes (a stop, a timeout) must not leave a
    connection holding the write lock: under SQLite every later writer then waited out the
    30 s busy timeout and failed with "database is locked"."""
    async with TaskStore(db_url) as store:
        record = await store.create_task(TaskRecord(description="cancelled writers"))
        completed = 0

        async def writer(seed: int) -> None:
            nonlocal completed
            for i in range(60):
                if i % 3:
                    await store.add_usage(record.id, steps=1)
                    completed += 1
                    continue
                # Deadlines from 0 to 10 ms land before, during and after the statement.
                with anyio.move_on_after(((seed * 7 + i) % 11) / 1000):
                    await store.add_usage(record.id, steps=1)

        # A stuck lock shows as a hang here (each write otherwise takes milliseconds).
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for seed in range(16):
                    group.start_soon(writer, seed)
            final = await store.add_usage(record.id, steps=1)
    # Every write that reported success is counted; a cancelled one may or may not have landed.
    assert completed + 1 <= final.steps <= 16 * 60 + 1
