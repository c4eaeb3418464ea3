"""Time that counts only work: a task's time limit does not run while it waits for a person.

The runner starts the clock when the task runs and stops it when the task is paused, taken
over or waiting for an answer. Awaits that must end at the limit (a model call, a tool call)
run inside ``bounded()`` scopes whose deadlines the clock moves as it stops and starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class WorkClock:
    def __init__(self, budget_s: float) -> None:
        self._budget = budget_s
        self._used = 0.0  # work time of the finished running spells
        self._since: float | None = None  # when the current running spell began
        self._scopes: set[anyio.CancelScope] = set()

    @property
    def budget_s(self) -> float:
        return self._budget

    def start(self) -> None:
        if self._since is None:
            self._since = anyio.current_time()
            self._sync()

    def stop(self) -> None:
        if self._since is not None:
            self._used += anyio.current_time() - self._since
            self._since = None
            self._sync()

    def extend(self, seconds: float) -> None:
        self._budget += seconds
        self._sync()

    def used(self) -> float:
        running = anyio.current_time() - self._since if self._since is not None else 0.0
        return self._used + running

    def remaining(self) -> float:
        return self._budget - self.used()

    @contextmanager
    def bounded(self) -> Iterator[anyio.CancelScope]:
        """A scope cancelled when the work time runs out (check ``cancelled_caught``)."""
        scope = anyio.CancelScope(deadline=self._deadline())
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def _deadline(self) -> float:
        if self._since is None:
            return math.inf
        return self._since + (self._budget - self._used)

    def _sync(self) -> None:
        deadline = self._deadline()
        for scope in self._scopes:
            scope.deadline = deadline
