"""Store fixtures: every store test runs on SQLite, and on postgres when a server is given.

HIVECELL_TEST_POSTGRES_URL (e.g. postgresql+asyncpg://hivecell:hivecell@localhost/postgres)
names a role allowed to CREATE DATABASE; each test gets a fresh database, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from hivecell.store import TaskStore

POSTGRES_URL = os.environ.get("HIVECELL_TEST_POSTGRES_URL")
# Owner tokens no live process holds: pid 0 is never a user process on this host, and the
# other host's processes cannot be checked at all.
DEAD_OWNER = f"{socket.gethostname()}:0:0"
OTHER_HOST_OWNER = "some-other-host:4242:123456"

BACKENDS = [pytest.param("sqlite", id="sqlite")]
if POSTGRES_URL:
    BACKENDS.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """One scratch database per test session (and per xdist worker)."""
    assert POSTGRES_URL is not None
    admin = make_url(POSTGRES_URL)
    name = f"hivecell_test_{secrets.token_hex(4)}"
    anyio.run(_execute, admin, f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name)
    finally:
        anyio.run(_execute, admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'hivecell.db'}"
    database: URL = request.getfixturevalue("postgres_database")
    # Empty again, so every test also migrates a fresh schema: every table, whatever
    # migrations add (naming them let a new table outlive the reset and break the next run).
    anyio.run(_execute, database, "DROP SCHEMA IF EXISTS public CASCADE")
    anyio.run(_execute, database, "CREATE SCHEMA public")
    return database.render_as_string(hide_password=False)


async def _execute(url: URL, statement: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[TaskStore]:
    async with TaskStore(db_url) as opened:
        yield opened
