"""The ``task_*`` tools: hand a whole task to a hivecell agent and follow it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field

from hivecell.mcp.errors import tool_errors
from hivecell.mcp.session import session_of
from hivecell.mcp.tasks import TaskBackend, TaskOrder, TaskView

TaskId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a task id")]

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
RUN = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=True)
STEER = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False)
STOP = ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=False)


async def task_run(
    ctx: Context[Any, Any],
    description: Annotated[str, Field(min_length=1, max_length=50_000)],
    files: Annotated[
        list[str] | None,
        Field(description="host files copied to /shared/inbox (stdio only: paths on this host)"),
    ] = None,
    provider: Annotated[str | None, Field(description="a [providers.NAME] of config.toml")] = None,
    model: Annotated[str | None, Field(description="model name; default the provider's")] = None,
    max_steps: Annotated[int | None, Field(ge=1, le=10_000)] = None,
    wait: Annotated[
        bool,
        Field(
            description="return only when the task ends or waits for an answer, sending "
            "progress notifications meanwhile (default: return the id at once)"
        ),
    ] = False,
) -> TaskView:
    """Hand a task to a hivecell agent working in a fresh desktop sandbox; returns its id.
    Follow it with task_status; answer its questions with task_answer."""
    tasks = session_of(ctx).tasks
    order = TaskOrder(
        description=description,
        files=[Path(f) for f in files or []],
        provider=provider,
        model=model,
        max_steps=max_steps,
    )
    started = await tasks.start(order)
    if not wait:
        return started
    return await follow(ctx, tasks, started, max_steps)


async def follow(
    ctx: Context[Any, Any], tasks: TaskBackend, view: TaskView, max_steps: int | None
) -> TaskView:
    """Progress notifications until the task ends or waits for an answer."""
    total = float(max_steps) if max_steps else None
    async for seen in tasks.watch(view.id):
        view = seen
        await ctx.report_progress(view.steps, total, f"{view.status}: step {view.steps}")
        if view.pending is not None:
            break
    return view


async def task_status(ctx: Context[Any, Any], id: TaskId) -> TaskView:
    """A task's status, steps, pending question, summary and output files (artifacts)."""
    return await session_of(ctx).tasks.view(id)


async def task_answer(
    ctx: Context[Any, Any],
    id: TaskId,
    answer: Annotated[str, Field(min_length=1, max_length=20_000)],
) -> TaskView:
    """Answer the task's pending question or choice. For an approval: "approve" allows the
    action, anything else denies it (the text is the reason)."""
    return await session_of(ctx).tasks.answer(id, answer)


async def task_cancel(ctx: Context[Any, Any], id: TaskId) -> TaskView:
    """Cancel a running task (it ends as cancelled; its sandbox is removed)."""
    return await session_of(ctx).tasks.cancel(id)


TOOLS = (
    (task_run, RUN),
    (task_status, READ_ONLY),
    (task_answer, STEER),
    (task_cancel, STOP),
)


def register(server: MCPServer[Any]) -> None:
    for fn, hints in TOOLS:
        server.add_tool(tool_errors(fn), name=fn.__name__, annotations=hints)
