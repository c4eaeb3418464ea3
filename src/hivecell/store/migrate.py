"""Bring a database to the newest schema. Users never run alembic themselves: open() does.

Adding a revision (after changing schema.py; tests/store/test_migrations.py checks the two agree):
    uv run python -c "from alembic import command; from hivecell.store.migrate import \
alembic_config; command.revision(alembic_config(), 'add foo', rev_id='0002')"
then write its upgrade()/downgrade() by hand.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from hivecell.store.engine import WRITE_OPTION

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary constant shared by every hivecell process: serialises concurrent upgrades on postgres.
_PG_LOCK_KEY = 0x68697665


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # New revisions get importable module names (versions/rNNNN_slug.py), which mypy requires.
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Run pending migrations in one transaction that holds the database's write lock, so two
    processes opening a fresh database at once do not both try to create the tables."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{WRITE_OPTION: True})
        async with conn.begin():
            await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    command.upgrade(alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
