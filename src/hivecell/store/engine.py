"""Engine construction: SQLite tuned so a server and a CLI can share one file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from hivecell.errors import ConfigError

# Long enough to ride out another process's write burst, short enough to surface a stuck lock.
SQLITE_BUSY_TIMEOUT_S = 30.0
# Execution option asking for BEGIN IMMEDIATE: take the write lock up front, so a transaction
# that reads before it writes waits for the lock instead of failing with SQLITE_BUSY.
WRITE_OPTION = "hivecell_write"


def default_database_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / 'hivecell.db'}"


def parse_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"not a database URL: {url!r}", op="store.open") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported database {parsed.get_backend_name()!r}; use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://USER@HOST/DB",
            op="store.open",
        )
    return parsed


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def create_engine(url: URL) -> AsyncEngine:
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own implicit transactions skip DDL and can't BEGIN IMMEDIATE;
    # turn them off and let _sqlite_begin emit BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    _enable_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Two connections opening a fresh database at once (a server and a CLI, two stores) both
    read it, then each needs it alone to switch it to WAL: SQLite fails one at once with
    "database is locked" instead of deadlocking, without waiting out the busy timeout. The
    mode is stored in the file, so retrying until the other has switched it succeeds."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver adapter's OperationalError
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
        # We run inside SQLAlchemy's greenlet on the event loop: wait there, never block it.
        await_(asyncio.sleep(delay))
        delay = min(delay * 2, 0.1)


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
