from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from hivecell.store import TaskRecord, TaskStore
from hivecell.store.engine import create_engine, parse_url, sqlite_file
from hivecell.store.migrate import current_revision, head_revision
from hivecell.store.schema import Base

pytestmark = pytest.mark.anyio


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_fresh_database_reaches_head(db_url: str) -> None:
    async with TaskStore(db_url):
        pass
    engine = create_engine(parse_url(db_url))
    try:
        assert await current_revision(engine) == head_revision() is not None
    finally:
        await engine.dispose()


async def test_migrations_match_models(db_url: str) -> None:
    """A model change without a new revision would show up here as a difference."""
    async with TaskStore(db_url):
        pass
    engine = create_engine(parse_url(db_url))
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
    finally:
        await engine.dispose()


async def test_concurrent_first_opens_both_succeed(db_url: str) -> None:
    stores = [TaskStore(db_url), TaskStore(db_url)]
    async with anyio.create_task_group() as group:
        for store in stores:
            group.start_soon(store.open)
    record = await stores[0].create_task(TaskRecord(description="after race"))
    assert await stores[1].get(record.id) == record
    for store in stores:
        await store.close()


async def test_fresh_sqlite_files_opened_at_once_never_refuse(tmp_path: Path) -> None:
    """Both connections read the new file, then each needs it alone to switch it to WAL:
    SQLite refused one at once ("database is locked"), about one race in five here, and the
    failed connection's close then hung the event loop. Raced on many fresh files."""
    for attempt in range(30):
        url = f"sqlite+aiosqlite:///{tmp_path / str(attempt) / 'hivecell.db'}"
        stores = [TaskStore(url), TaskStore(url)]
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for store in stores:
                    group.start_soon(store.open)
        for store in stores:
            await store.close()


def _upgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    from hivecell.store.migrate import alembic_config

    command.upgrade(alembic_config(connection), revision)


async def test_a_0001_database_gains_retry_of_and_keeps_its_tasks(db_url: str) -> None:
    """Databases made before retries (revision 0001) open, keep their rows, and link retries."""
    url = parse_url(db_url)
    if (path := sqlite_file(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0001")
        old = TaskRecord(description="made before retries")
        async with engine.begin() as conn:
            # Only the 0001 columns are named, so the INSERT fits the old table.
            row = {k: v for k, v in old.to_row().items() if k != "retry_of"}
            await conn.execute(Base.metadata.tables["tasks"].insert().values(row))
    finally:
        await engine.dispose()
    async with TaskStore(db_url) as store:
        assert (await store.get(old.id)).retry_of is None
        retry = await store.create_task(TaskRecord(description="again", retry_of=old.id))
        assert (await store.get(retry.id)).retry_of == old.id
