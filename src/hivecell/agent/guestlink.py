"""A task's connection to its sandbox's guest agent, kept through guest faults.

The link watches the connection (heartbeats every 2 s; see ``GuestClient.wait_lost``). When
the guest goes silent or the connection drops it tells the task (which pauses with
``guest_unreachable``) and reconnects with backoff for up to ``window_s``. Back: the task
resumes where it was. If the provider says the sandbox is gone, or the window passes, the
task ends as ``guest_lost``.

A call that was in flight when the connection dropped is retried only if it cannot change
anything (screenshots, reads, waits). Any other action may or may not have run before the
agent died: running it again could type the text twice or run the command twice, so the
model gets it back as a failed action with that warning, plus a fresh screenshot, and
decides itself. That is what a person driving the desktop would do after a glitch: look,
then act.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from hivecell.errors import GuestUnavailable, HivecellError, SandboxError, SandboxNotFound
from hivecell.sandbox.base import SandboxProvider
from hivecell.sandbox.guest_client import GuestClient

GUEST_WINDOW_S = 120.0  # how long a lost guest is retried before the task ends guest_lost
ATTEMPT_S = 5.0  # one reconnection attempt: connect and ping
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
# Guest methods that change nothing: safe to run again after a reconnection.
RETRY_SAFE = frozenset(
    {
        "screenshot",
        "get_screen_size",
        "get_cursor_position",
        "wait_for_settle",
        "wait",
        "clipboard_read",
        "read_file",
        "list_directory",
        "stat_file",
        "ping",
        "list_windows",
        "get_frontmost_app",
        "list_running_apps",
        "accessibility_tree",
    }
)
GuestEvent = Literal["unreachable", "back", "lost"]
FaultSink = Callable[[GuestEvent, str], None]


class GuestLink:
    """Use as an async context manager; ``call`` is the runner's ``GuestCall``."""

    def __init__(
        self,
        provider: SandboxProvider,
        sandbox_id: str,
        *,
        on_fault: FaultSink,
        window_s: float = GUEST_WINDOW_S,
    ) -> None:
        self._provider = provider
        self._sandbox_id = sandbox_id
        self._on_fault = on_fault
        self._window_s = window_s
        self._client: GuestClient | None = None  # None while reconnecting or lost
        self._lost: str | None = None
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> GuestLink:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._keep)
        except BaseException as exc:
            await self._tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    # --- what the runner calls ---------------------------------------------------------------
    async def call(self, method: str, params: dict[str, Any]) -> Any:
        while True:
            client = await self._usable(method)
            try:
                return await client.call(method, params)
            except GuestUnavailable as exc:
                await self._replaced(client)
                if method not in RETRY_SAFE:
                    raise GuestUnavailable(
                        f"the connection to the sandbox was lost while {method} ran "
                        f"({exc.message}); it may or may not have taken effect: check the "
                        "screen or the files before doing it again",
                        op=method,
                    ) from exc

    async def _usable(self, method: str) -> GuestClient:
        """The connected client; waits while the link reconnects."""
        while True:
            if self._lost is not None:
                # A task ended by the loss is cancelled here, not handed an error to report.
                await anyio.lowlevel.checkpoint()
                raise GuestUnavailable(f"guest_lost: {self._lost}", op=method, retryable=False)
            if self._client is not None:
                return self._client
            await self._changed.wait()

    async def _replaced(self, client: GuestClient) -> None:
        """Wait until the watcher noticed that ``client`` is gone (it may not have woken yet)."""
        while self._client is client and self._lost is None:
            await self._changed.wait()

    def _set(self, client: GuestClient | None, lost: str | None = None) -> None:
        self._client, self._lost = client, lost
        self._changed.set()
        self._changed = anyio.Event()

    # --- the watcher (owns every client it opens) -----------------------------------------
    async def _keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        client: GuestClient | None = await self._open(ATTEMPT_S)
        self._set(client)
        task_status.started()
        try:
            while client is not None:
                reason = await client.wait_lost()
                self._set(None)
                self._on_fault("unreachable", reason)
                await self._close(client, reason)
                client = None
                client = await self._reconnect(reason)
        finally:
            if client is not None:
                await self._close(client, "the task ended")

    async def _reconnect(self, reason: str) -> GuestClient | None:
        started = anyio.current_time()
        deadline = started + self._window_s
        backoff, last = FIRST_BACKOFF_S, reason
        while True:
            gone = await self._sandbox_gone()
            left = deadline - anyio.current_time()
            if gone is None and left <= 0:
                gone = f"the guest agent did not answer within {self._window_s:g} s ({last})"
            if gone is not None:
                self._set(None, lost=gone)
                self._on_fault("lost", gone)
                return None
            try:
                client = await self._open(min(ATTEMPT_S, left))
            except (HivecellError, TimeoutError, OSError) as exc:
                last = str(exc) or type(exc).__name__
            else:
                took = anyio.current_time() - started
                self._set(client)
                self._on_fault("back", f"reconnected to the guest agent after {took:.1f} s")
                return client
            await anyio.sleep(min(backoff, max(0.0, deadline - anyio.current_time())))
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _sandbox_gone(self) -> str | None:
        """Why the sandbox cannot come back (stopped, removed), or None if it still runs."""
        try:
            info = await self._provider.info(self._sandbox_id)
        except SandboxNotFound:
            return f"sandbox {self._sandbox_id} no longer exists"
        except SandboxError:
            return None  # cannot tell: keep trying within the window
        if info.status == "running":
            return None
        detail = f": {info.detail}" if info.detail else ""
        return f"sandbox {self._sandbox_id} is {info.status}{detail}"

    async def _open(self, timeout: float) -> GuestClient:
        """A connected client whose agent answers: a stopped agent's socket still accepts."""
        client = await self._provider.connect(self._sandbox_id)
        await client.__aenter__()  # bounded by the client's own connect timeout
        try:
            await client.call("ping", timeout=timeout)
        except BaseException:
            # Not shielded here: the client's task group must be the innermost scope as it
            # exits (its __aexit__ shields the stream close itself).
            await client.__aexit__(None, None, None)
            raise
        return client

    @staticmethod
    async def _close(client: GuestClient, reason: str) -> None:
        # No shield around these: the client's task group must be the innermost scope when it
        # exits. Both shield what must finish themselves.
        await client.abort(reason)
        await client.__aexit__(None, None, None)
