"""Resources: each sandbox's latest screenshot, each task's trace and its output files.

    hivecell://sandboxes/{id}/screenshot       PNG of the screen now
    hivecell://tasks/{id}/trace                the trace's steps (JSON)
    hivecell://tasks/{id}/artifacts            the output files (JSON: name, size, uri)
    hivecell://tasks/{id}/artifacts/{+name}    one output file's bytes

Only files the task record lists as its artifacts are served, opened without following
links, from its output folder: a resource URI never names an arbitrary host path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer

from hivecell.errors import NotFound, PathDenied
from hivecell.mcp.errors import resource_errors
from hivecell.mcp.session import session_of
from hivecell.trace import TraceReader

SCREENSHOT = "hivecell://sandboxes/{id}/screenshot"
TRACE = "hivecell://tasks/{id}/trace"
ARTIFACTS = "hivecell://tasks/{id}/artifacts"
ARTIFACT = "hivecell://tasks/{id}/artifacts/{+name}"
MAX_ARTIFACT_BYTES = 50 * 1024 * 1024  # a resource travels whole, base64 in one message


async def screenshot(id: str, ctx: Context[Any, Any]) -> bytes:
    async with session_of(ctx).sandboxes.open(id, act=False) as sandbox:
        return await sandbox.screenshot("png")


async def trace(id: str, ctx: Context[Any, Any]) -> str:
    view = await session_of(ctx).tasks.view(id)
    if view.trace_dir is None:
        raise NotFound(f"task {id} has no trace yet", op="read_trace", context={"id": id})
    steps = await anyio.to_thread.run_sync(TraceReader(Path(view.trace_dir)).steps)
    return json.dumps([step.model_dump(mode="json") for step in steps])


async def artifacts(id: str, ctx: Context[Any, Any]) -> str:
    view = await session_of(ctx).tasks.view(id)
    items = []
    for name in view.artifacts:
        path = Path(view.output_dir or "") / name
        size = (await anyio.Path(path).lstat()).st_size if view.output_dir else None
        items.append({"name": name, "size": size, "uri": ARTIFACTS.format(id=id) + "/" + name})
    return json.dumps({"task_id": id, "status": view.status, "items": items})


async def artifact(id: str, name: str, ctx: Context[Any, Any]) -> bytes:
    view = await session_of(ctx).tasks.view(id)
    if name not in view.artifacts or view.output_dir is None:
        raise NotFound(
            f"task {id} has no output file {name!r}; {ARTIFACTS.format(id=id)} lists them",
            op="read_artifact",
            context={"id": id, "name": name},
        )
    return await anyio.to_thread.run_sync(_read_nofollow, Path(view.output_dir), name)


def _read_nofollow(root: Path, name: str) -> bytes:
    """Walk ``name`` under ``root`` one component at a time, refusing links on the way."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags | os.O_DIRECTORY)
    try:
        *folders, leaf = name.split("/")
        for part in folders:
            next_fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(leaf, flags, dir_fd=fd)
    except OSError as exc:
        raise PathDenied(f"cannot open output file {name!r}: {exc.strerror}", op="read") from None
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as f:
        data = f.read(MAX_ARTIFACT_BYTES + 1)
    if len(data) > MAX_ARTIFACT_BYTES:
        raise PathDenied(f"{name!r} is over {MAX_ARTIFACT_BYTES} bytes: copy it from the "
                         "task's output folder instead", op="read")  # fmt: skip
    return data


def register(server: MCPServer[Any]) -> None:
    server.resource(
        SCREENSHOT, name="sandbox_screenshot", mime_type="image/png",
        description="the sandbox's screen now",
    )(resource_errors(screenshot))  # fmt: skip
    server.resource(
        TRACE, name="task_trace", mime_type="application/json",
        description="the task's trace: every step, tool call and result",
    )(resource_errors(trace))  # fmt: skip
    server.resource(
        ARTIFACTS, name="task_artifacts", mime_type="application/json",
        description="the task's output files",
    )(resource_errors(artifacts))  # fmt: skip
    server.resource(
        ARTIFACT, name="task_artifact", mime_type="application/octet-stream",
        description="one output file of the task",
    )(resource_errors(artifact))  # fmt: skip
