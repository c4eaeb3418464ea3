"""Run a job beside an awaited body, with the body's errors kept as themselves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio

_T = TypeVar("_T")


async def beside(
    job: Callable[[], Coroutine[Any, Any, None]], body: Callable[[], Awaitable[_T]]
) -> _T:
    """Await ``body`` with ``job`` running beside it; return once both ended.

    ``body``'s error is re-raised as itself, not inside an ExceptionGroup: callers match on
    the typed HivecellError. ``job`` must not raise (its error would arrive grouped).
    """
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        try:
            result = await body()
        except Exception as exc:
            failure = exc
    if failure is not None:
        raise failure
    return result
