"""Task persistence: ``TaskStore`` over SQLite or postgres, migrated on open."""

from hivecell.store.engine import default_database_url
from hivecell.store.errors import CrewNotFound, InvalidTransition, StoreClosed, TaskNotFound
from hivecell.store.records import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    RETRYABLE_STATUSES,
    TERMINAL_STATUSES,
    TaskRecord,
    TaskSettings,
    TaskStatus,
    new_task_id,
)
from hivecell.store.store import TaskStore

__all__ = [
    "ACTIVE_STATUSES",
    "ENDED_STATUSES",
    "RETRYABLE_STATUSES",
    "TERMINAL_STATUSES",
    "CrewNotFound",
    "InvalidTransition",
    "StoreClosed",
    "TaskNotFound",
    "TaskRecord",
    "TaskSettings",
    "TaskStatus",
    "TaskStore",
    "default_database_url",
    "new_task_id",
]
