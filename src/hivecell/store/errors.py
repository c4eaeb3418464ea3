"""Store errors: the shared hivecell error shape with codes of their own."""

from __future__ import annotations

from hivecell.errors import HivecellError, NotFound


class TaskNotFound(NotFound):
    code = "task_not_found"


class CrewNotFound(NotFound):
    code = "crew_not_found"


class InvalidTransition(HivecellError):
    """A finished task was asked to change status; its outcome is final."""

    code = "invalid_transition"


class StoreClosed(HivecellError):
    """The TaskStore was used before open() or after close()."""

    code = "store_closed"
