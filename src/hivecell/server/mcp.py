"""MCP over Streamable HTTP at ``/mcp`` inside ``hivecell up``.

The same tools as ``hivecell mcp``, with the server's rules: sandboxes are created within
capacity and shown on the dashboard, a running task's desktop is not driven unless a person
took the task over, and tasks go through the task manager (queue, dashboard, events). The
endpoint sits behind the same perimeter as the API (``RequestGuard``: Host, Origin, body
size) and the same token, which MCP clients send as ``Authorization: Bearer``. An Origin
other than the server's own is refused on every method here, reads included.

All HTTP clients share one MCP session state: sandboxes created over HTTP without ``keep``
are removed when the server stops (or with ``sandbox_remove``); the transport's sessions
have no reliable end (a client may vanish without a DELETE).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from hivecell.errors import InvalidParams, Unauthenticated
from hivecell.mcp.boxes import SandboxAccess, SessionSandboxes
from hivecell.mcp.server import build_server
from hivecell.mcp.session import Session
from hivecell.mcp.tasks import TaskOrder, TaskView, view_of
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.server import auth, guard
from hivecell.server.errors import Conflict, error_body
from hivecell.server.manager import FINAL
from hivecell.trace import Actor

if TYPE_CHECKING:
    from hivecell.server.app import ServerState

PATH = "/mcp"
MCP_ACTOR = Actor(kind="api")


class ServerAccess(SandboxAccess):
    def __init__(self, state: ServerState) -> None:
        super().__init__(state.provider)
        self.state = state

    def spec(self, given: dict[str, Any]) -> SandboxSpec:
        """The server's sandbox defaults (Settings) under what the caller gave."""
        return super().spec(self.state.prefs.sandbox.model_dump() | given)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        state = self.state
        async with state.capacity.admitted(spec, wait=False, make_room=state.pool.evict_one):
            info = await super().create(spec)
        state.hub.publish("sandbox.created", {"sandbox_id": info.id, "task_id": None})
        return info

    async def destroy(self, sandbox_id: str) -> None:
        await self.provider.info(sandbox_id)  # unknown ids: sandbox_not_found
        task_id = self.state.manager.task_of_sandbox(sandbox_id)
        if task_id is not None:
            raise Conflict(
                f"sandbox {sandbox_id} runs task {task_id}: cancel the task instead",
                op="sandbox_remove",
                context={"id": sandbox_id, "task_id": task_id},
            )
        await self.state.manager.destroy_sandbox(sandbox_id)

    async def check_drive(self, info: SandboxInfo) -> None:
        if not self.state.manager.may_drive(info.id):
            task_id = self.state.manager.task_of_sandbox(info.id)
            why = f"runs task {task_id}: take the task over first" if task_id else "is warm"
            raise Conflict(
                f"sandbox {info.id} {why}",
                op="sandbox_act",
                context={"id": info.id, "task_id": task_id},
            )

    async def list(self) -> builtins.list[SandboxInfo]:
        return [i for i in await self.provider.list() if not self.state.pool.is_pools(i)]


class ServerTasks:
    """Task tools through the server's task manager: queued, on the dashboard, evented."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def start(self, order: TaskOrder) -> TaskView:
        from hivecell.server.api.intake import TaskCreate, enqueue_task

        if order.files:
            raise InvalidParams(
                "files: host paths work over stdio (hivecell mcp) only; over HTTP send "
                "files with POST /api/v1/tasks (multipart)",
                op="task_run",
            )
        body = TaskCreate(
            description=order.description,
            provider=order.provider,
            model=order.model,
            max_steps=order.max_steps,
        )
        return await self.view((await enqueue_task(self.state, body)).id)

    async def view(self, task_id: str) -> TaskView:
        record = await self.state.store.get(task_id)
        live = self.state.manager.live(task_id)
        pending = live.get("pending")
        # The runner asks before the record says so (the store is written a moment later).
        status = "waiting_for_user" if pending is not None else None
        return view_of(record, steps=live.get("steps"), pending=pending, status=status)

    async def answer(self, task_id: str, text: str) -> TaskView:
        pending = self.state.manager.pending(task_id)
        action = "answer"
        if pending is not None and pending["kind"] == "approval":
            action = "approve" if _approves(text) else "deny"
            text = "" if action == "approve" else text
        elif pending is None:
            await self.state.store.get(task_id)  # unknown ids: task_not_found
            raise InvalidParams("the task is not waiting for an answer", op="task_answer")
        await self.state.manager.control(task_id, action, text, by=MCP_ACTOR)
        return await self.view(task_id)

    async def cancel(self, task_id: str) -> TaskView:
        await self.state.manager.control(task_id, "cancel", by=MCP_ACTOR)
        return await self.view(task_id)

    async def watch(self, task_id: str) -> AsyncIterator[TaskView]:
        with self.state.hub.subscribe() as events:
            while True:
                view = await self.view(task_id)
                yield view
                if view.status in FINAL:
                    return
                if not await _next_event_of(events.receive, task_id):
                    await anyio.sleep(1)  # dropped by the hub (too slow): look now and then


async def _next_event_of(events: Any, task_id: str) -> bool:
    """Wait for an event about the task; False once the hub dropped this subscriber."""
    async for event in events:
        if event["data"].get("task_id") == task_id:
            return True
    return False


def _approves(text: str) -> bool:
    return text.strip().casefold() in ("approve", "approved", "yes", "y", "allow", "ok")


class McpEndpoint:
    """The ASGI endpoint at ``/mcp``: token and Origin first, then the SDK's transport."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.server = build_server(lambda: server_session(state))
        # The SDK's own Host/Origin check is off: RequestGuard applies the server's (with
        # its --allowed-host names) to /mcp like to every route.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self.server.streamable_http_app(streamable_http_path=PATH, transport_security=security)

    def run(self) -> Any:
        """The transport's lifetime (the app's lifespan enters it)."""
        return self.server.session_manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope)
        if refusal is not None:
            body = error_body(refusal.code, refusal.message, op="mcp")
            await JSONResponse(body, status_code=refusal.status)(scope, receive, send)
            return
        await self.server.session_manager.handle_request(scope, receive, send)

    def _refusal(self, scope: Scope) -> guard.Refusal | None:
        headers = Headers(scope=scope)
        host = guard.split_host(headers.get("host", ""))
        if host is None:  # RequestGuard refused it already; never serve it regardless
            return guard.Refusal(400, "host_not_allowed", "no valid Host header")
        refusal = guard.origin_refusal(scope, headers, host)
        if refusal is not None:
            return refusal
        try:
            auth.check(HTTPConnection(scope), self.state.config.token)
        except Unauthenticated as exc:
            return guard.Refusal(401, exc.code, exc.message)
        return None


@asynccontextmanager
async def server_session(state: ServerState) -> AsyncIterator[Session]:
    sandboxes = SessionSandboxes(ServerAccess(state))
    try:
        yield Session(sandboxes, ServerTasks(state))
    finally:
        with anyio.CancelScope(shield=True):
            await sandboxes.close()
