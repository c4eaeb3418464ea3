"""TaskStore: the one place tasks are persisted, for SQLite and postgres alike."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from types import TracebackType
from typing import Any

import anyio
from sqlalchemy import ColumnElement, Row, Update, func, insert, literal, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hivecell.errors import InvalidParams
from hivecell.store.engine import WRITE_OPTION, create_engine, parse_url, sqlite_file
from hivecell.store.errors import CrewNotFound, InvalidTransition, StoreClosed, TaskNotFound
from hivecell.store.fields import validate_update
from hivecell.store.migrate import upgrade_to_head
from hivecell.store.owner import owner_alive, process_token
from hivecell.store.records import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    TERMINAL_STATUSES,
    TaskRecord,
    TaskStatus,
    utcnow,
)
from hivecell.store.schema import CREWS, TASKS, UTCDateTime

StatusFilter = TaskStatus | str | Iterable[TaskStatus | str] | None

_COLUMNS = [column for column in TASKS.c if column.name != "seq"]
_INTERRUPTED_ERROR = "interrupted: the process running this task exited before it finished"


class TaskStore:
    """Persistent task records. ``await store.open()`` (or ``async with``) before use.

    ``owner`` identifies this process on the tasks it creates or runs; it defaults to a token of
    the current process and only needs overriding in tests.
    """

    def __init__(self, url: str | URL, *, owner: str | None = None) -> None:
        self.url = parse_url(url)
        self.owner = owner or process_token()
        self._engine: AsyncEngine | None = None
        # One writer at a time from this process, in arrival order: SQLite's own busy handler
        # polls with growing sleeps, so 16 writers in one server starved some for seconds.
        # Other processes sharing the file still meet the busy timeout. PostgreSQL locks rows.
        self._writers: AbstractAsyncContextManager[Any] = (
            anyio.Lock() if self.url.get_backend_name() == "sqlite" else nullcontext()
        )

    async def open(self) -> TaskStore:
        """Connect and migrate the schema to head; safe to call on an up-to-date database."""
        if self._engine is not None:
            return self
        path = sqlite_file(self.url)
        if path is not None:
            await anyio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
        engine = create_engine(self.url)
        try:
            await upgrade_to_head(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        return self

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> TaskStore:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def create_task(self, record: TaskRecord) -> TaskRecord:
        if record.owner is None and record.status in ACTIVE_STATUSES:
            record = record.model_copy(update={"owner": self.owner})
        try:
            async with self._write() as conn:
                await conn.execute(insert(TASKS).values(record.to_row()))
        except IntegrityError as exc:
            raise InvalidParams(f"task {record.id} already exists", op="store.create_task") from exc
        return record

    async def get(self, task_id: str) -> TaskRecord:
        async with self._read() as conn:
            row = await _fetch(conn, task_id)
        if row is None:
            raise TaskNotFound(f"no task {task_id!r}", op="store.get", context={"id": task_id})
        return _record(row)

    async def update(self, task_id: str, **fields: Any) -> TaskRecord:
        """Set fields. Changing status also stamps started_at/finished_at/owner unless given.

        A task in a terminal status keeps it: moving it elsewhere raises InvalidTransition.
        """
        values = validate_update(fields)
        if not values:
            return await self.get(task_id)
        values |= self._implied_by_status(values)
        statement = update(TASKS).where(TASKS.c.id == task_id).values(values)
        if "status" in values:
            statement = statement.where(_may_become(values["status"]))
        return await self._update_one(task_id, statement, op="store.update")

    async def add_usage(
        self,
        task_id: str,
        *,
        steps: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> TaskRecord:
        """Add to the counters in one statement, so concurrent writers never lose increments."""
        deltas = dict(
            steps=steps,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
        )
        if any(delta < 0 for delta in deltas.values()):
            raise InvalidParams("usage deltas must not be negative", op="store.add_usage")
        values = {name: TASKS.c[name] + delta for name, delta in deltas.items()}
        statement = update(TASKS).where(TASKS.c.id == task_id).values(values)
        return await self._update_one(task_id, statement, op="store.add_usage")

    async def mark_interrupted(
        self, *, include_queued: bool = True, all_owners: bool = False
    ) -> builtins.list[str]:
        """Interrupt the unfinished tasks whose owning process is gone; return their ids.

        Call at startup. Tasks owned by a live process on this host (another server or CLI
        sharing the database) and by processes on other hosts are left alone unless
        ``all_owners``. ``include_queued=False`` keeps queued tasks for a runner that picks
        its queue up from the database.
        """
        statuses = ACTIVE_STATUSES if include_queued else ACTIVE_STATUSES - {TaskStatus.QUEUED}
        async with self._write() as conn:
            result = await conn.execute(
                select(TASKS.c.id, TASKS.c.owner).where(TASKS.c.status.in_(statuses))
            )
            candidates = result.all()
            dead = await _dead_owners({owner for _, owner in candidates}, all_owners)
            ids = [task_id for task_id, owner in candidates if owner in dead]
            if ids:
                await conn.execute(_interrupt(ids))
        return ids

    async def count(
        self,
        status: StatusFilter = None,
        search: str | None = None,
    ) -> int:
        statement = select(func.count()).select_from(TASKS).where(*_filters(status, search))
        async with self._read() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def list(
        self,
        status: StatusFilter = None,
        search: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[TaskRecord]:
        """Newest first. ``search`` matches description text, case-insensitively."""
        if limit < 0 or offset < 0:
            raise InvalidParams("limit and offset must not be negative", op="store.list")
        statement = (
            select(*_COLUMNS)
            .where(*_filters(status, search))
            .order_by(TASKS.c.created_at.desc(), TASKS.c.seq.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._read() as conn:
            return [_record(row) for row in (await conn.execute(statement)).all()]

    # --- crews: documents the crew layer shapes; the store keeps them and their owner -------
    async def create_crew(self, crew_id: str, status: str, doc: dict[str, Any]) -> None:
        row = {"id": crew_id, "status": status, "owner": self.owner, "created_at": utcnow()}
        try:
            async with self._write() as conn:
                await conn.execute(insert(CREWS).values(row | {"doc": doc}))
        except IntegrityError as exc:
            raise InvalidParams(f"crew {crew_id} already exists", op="store.create_crew") from exc

    async def save_crew(self, crew_id: str, status: str, doc: dict[str, Any]) -> None:
        """Replace the crew's document (one writer per crew: the process running it)."""
        statement = update(CREWS).where(CREWS.c.id == crew_id)
        async with self._write() as conn:
            result = await conn.execute(statement.values(status=status, doc=doc))
        if result.rowcount == 0:
            raise CrewNotFound(
                f"no crew {crew_id!r}", op="store.save_crew", context={"id": crew_id}
            )

    async def get_crew(self, crew_id: str) -> dict[str, Any]:
        async with self._read() as conn:
            found = (await conn.execute(select(CREWS.c.doc).where(CREWS.c.id == crew_id))).first()
        if found is None:
            raise CrewNotFound(f"no crew {crew_id!r}", op="store.get_crew", context={"id": crew_id})
        return dict(found.doc)

    async def list_crews(self, limit: int = 50, offset: int = 0) -> builtins.list[dict[str, Any]]:
        """Newest first."""
        if limit < 0 or offset < 0:
            raise InvalidParams("limit and offset must not be negative", op="store.list_crews")
        order = (CREWS.c.created_at.desc(), CREWS.c.seq.desc())
        statement = select(CREWS.c.doc).order_by(*order).limit(limit).offset(offset)
        async with self._read() as conn:
            return [dict(row.doc) for row in (await conn.execute(statement)).all()]

    async def orphaned_crews(self, statuses: Collection[str]) -> builtins.list[dict[str, Any]]:
        """Crews in ``statuses`` whose owning process on this host is gone (at startup)."""
        statement = select(CREWS.c.owner, CREWS.c.doc).where(CREWS.c.status.in_(statuses))
        async with self._read() as conn:
            rows = (await conn.execute(statement)).all()
        dead = await _dead_owners({row.owner for row in rows}, all_owners=False)
        return [dict(row.doc) for row in rows if row.owner in dead]

    def _implied_by_status(self, values: dict[str, Any]) -> dict[str, Any]:
        status = values.get("status")
        implied: dict[str, Any] = {}
        if status in ACTIVE_STATUSES:
            implied = {"owner": self.owner, "finished_at": None}
        if status == TaskStatus.RUNNING:
            implied["started_at"] = func.coalesce(TASKS.c.started_at, _now())
        if status in ENDED_STATUSES:
            implied["finished_at"] = func.coalesce(TASKS.c.finished_at, _now())
        return {name: value for name, value in implied.items() if name not in values}

    async def _update_one(self, task_id: str, statement: Update, *, op: str) -> TaskRecord:
        async with self._write() as conn:
            # RETURNING: the new row in the same statement (one round trip fewer per write)
            row = (await conn.execute(statement.returning(*_COLUMNS))).first()
            changed = row is not None
            if row is None:  # no such task, or a transition refused: which one
                row = await _fetch(conn, task_id)
        if row is None:
            raise TaskNotFound(f"no task {task_id!r}", op=op, context={"id": task_id})
        if not changed:
            raise InvalidTransition(
                f"task {task_id} is {row.status} and cannot change status",
                op=op,
                context={"id": task_id, "status": row.status},
            )
        return _record(row)

    @property
    def _live_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreClosed("TaskStore is not open; call await store.open()", op="store")
        return self._engine

    # Both are shielded from cancellation: a connection cancelled mid-statement is thrown away
    # with its close left pending, and under SQLite it kept holding the write lock, so every
    # later writer waited out the busy timeout ("database is locked" once 16 tasks were
    # cancelled at random). Store calls are short; the caller's cancel lands right after.
    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        with anyio.CancelScope(shield=True):
            async with self._writers, self._live_engine.connect() as conn:
                conn = await conn.execution_options(**{WRITE_OPTION: True})
                async with conn.begin():
                    yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with anyio.CancelScope(shield=True):
            async with self._live_engine.connect() as conn:
                yield conn


def _now() -> ColumnElement[Any]:
    return literal(utcnow(), UTCDateTime())


def _may_become(status: TaskStatus) -> ColumnElement[bool]:
    # Re-setting the same terminal status is allowed so a retried final update is harmless.
    return TASKS.c.status.not_in(TERMINAL_STATUSES) | (TASKS.c.status == status)


def _interrupt(ids: Collection[str]) -> Update:
    return (
        update(TASKS)
        .where(TASKS.c.id.in_(ids))
        .values(
            status=TaskStatus.INTERRUPTED,
            finished_at=_now(),
            error=func.coalesce(TASKS.c.error, _INTERRUPTED_ERROR),
        )
    )


def _filters(status: StatusFilter, search: str | None) -> builtins.list[ColumnElement[bool]]:
    filters: builtins.list[ColumnElement[bool]] = []
    if status is not None:
        filters.append(TASKS.c.status.in_(_statuses(status)))
    if search:
        filters.append(TASKS.c.description.icontains(search, autoescape=True))
    return filters


def _statuses(status: TaskStatus | str | Iterable[TaskStatus | str]) -> set[TaskStatus]:
    raw = [status] if isinstance(status, str) else builtins.list(status)
    try:
        return {TaskStatus(value) for value in raw}
    except ValueError as exc:
        raise InvalidParams(str(exc), op="store.list") from exc


async def _dead_owners(owners: set[str | None], all_owners: bool) -> set[str | None]:
    if all_owners:
        return owners
    # Liveness reads /proc, which is file I/O: keep it off the event loop.
    alive = await anyio.to_thread.run_sync(lambda: {owner: owner_alive(owner) for owner in owners})
    return {owner for owner, state in alive.items() if state is False}


async def _fetch(conn: AsyncConnection, task_id: str) -> Row[Any] | None:
    result = await conn.execute(select(*_COLUMNS).where(TASKS.c.id == task_id))
    return result.first()


def _record(row: Row[Any]) -> TaskRecord:
    return TaskRecord.model_validate(dict(row._mapping))
