"""Alembic environment. Runs only on a connection handed over by hivecell.store.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from hivecell.errors import ConfigError
from hivecell.store.schema import Base


def run() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise ConfigError(
            "hivecell migrations run through TaskStore.open(); offline alembic is not supported",
            op="store.migrate",
        )
    # Batch mode lets future revisions ALTER columns on SQLite by copying the table.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
