from __future__ import annotations

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from hivecell.store import TaskRecord, TaskStore
from hivecell.store.engine import create_engine, parse_url
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
