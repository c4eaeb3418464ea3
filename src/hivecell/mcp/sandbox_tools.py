"""The ``sandbox_*`` tools: create, look at, act on, run commands in and remove desktops."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ImageContent, ToolAnnotations
from pydantic import Field

from hivecell.errors import ConfigError, InvalidParams
from hivecell.mcp.errors import tool_errors
from hivecell.mcp.models import (
    Acted,
    ExecOutput,
    FileContent,
    Removed,
    SandboxList,
    SandboxView,
    Written,
    sandbox_view,
)
from hivecell.mcp.session import session_of
from hivecell.sandbox.base import NetworkMode

SandboxId = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a sandbox id (sandbox_list)")
]
X = Annotated[int, Field(ge=0, le=7680, description="pixels from the left")]
Y = Annotated[int, Field(ge=0, le=4320, description="pixels from the top")]

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
INPUT = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=False)


async def sandbox_create(
    ctx: Context[Any, Any],
    resolution: Annotated[
        tuple[int, int] | None, Field(description="[width, height]; default 1280x800")
    ] = None,
    network: Annotated[
        NetworkMode | None, Field(description="offline or nat; default offline")
    ] = None,
    provider: Annotated[str | None, Field(description="sandbox provider; default local")] = None,
    keep: Annotated[
        bool, Field(description="keep it after this MCP session ends (default: removed)")
    ] = False,
) -> SandboxView:
    """Create a Linux desktop sandbox and return its id (boots in a few seconds)."""
    boxes = session_of(ctx).sandboxes
    name = boxes.access.provider.name
    if provider not in (None, name):
        raise ConfigError(
            f"unknown sandbox provider {provider!r} here; this server uses {name!r}",
            op="sandbox_create",
            context={"provider": provider, "available": [name]},
        )
    given: dict[str, Any] = {} if network is None else {"network": network}
    if resolution is not None:
        given |= {"width": resolution[0], "height": resolution[1]}
    spec = boxes.access.spec(given)
    info = await boxes.create(spec, keep=keep)
    return sandbox_view(info, session=True, keep=keep)


async def sandbox_list(ctx: Context[Any, Any]) -> SandboxList:
    """The sandboxes on this host, with those this session created marked."""
    boxes = session_of(ctx).sandboxes
    items = [
        sandbox_view(info, session=boxes.made(info.id), keep=boxes.kept(info.id))
        for info in await boxes.access.list()
    ]
    return SandboxList(items=items)


async def sandbox_remove(ctx: Context[Any, Any], id: SandboxId) -> Removed:
    """Remove a sandbox: its processes, files and disk are gone for good."""
    await session_of(ctx).sandboxes.remove(id)
    return Removed(id=id)


async def sandbox_screenshot(
    ctx: Context[Any, Any],
    id: SandboxId,
    scale: Annotated[
        float | None, Field(gt=0, le=1, description="shrink factor, e.g. 0.5; default full size")
    ] = None,
) -> ImageContent:
    """The sandbox's screen now, as a PNG image."""
    async with session_of(ctx).sandboxes.open(id, act=False) as sandbox:
        png = await sandbox.screenshot("png", scale=scale)
    return ImageContent(type="image", data=base64.b64encode(png).decode(), mimeType="image/png")


async def sandbox_click(
    ctx: Context[Any, Any],
    id: SandboxId,
    x: X,
    y: Y,
    button: Literal["left", "right", "middle"] = "left",
    clicks: Annotated[int, Field(ge=1, le=3)] = 1,
) -> Acted:
    """Click at (x, y) in screen pixels."""
    async with session_of(ctx).sandboxes.open(id) as sandbox:
        await sandbox.click(x, y, button=button, clicks=clicks)
    return Acted(id=id, action="click")


async def sandbox_type(
    ctx: Context[Any, Any], id: SandboxId, text: Annotated[str, Field(max_length=100_000)]
) -> Acted:
    """Type text into the focused window."""
    async with session_of(ctx).sandboxes.open(id) as sandbox:
        await sandbox.type(text)
    return Acted(id=id, action="type")


async def sandbox_key(
    ctx: Context[Any, Any],
    id: SandboxId,
    keys: Annotated[str, Field(min_length=1, max_length=200, description="e.g. Return, ctrl+c")],
) -> Acted:
    """Press a key or a combination (xdotool names: Return, ctrl+l, alt+F4)."""
    async with session_of(ctx).sandboxes.open(id) as sandbox:
        await sandbox.key(keys)
    return Acted(id=id, action="key")


async def sandbox_scroll(
    ctx: Context[Any, Any],
    id: SandboxId,
    x: X,
    y: Y,
    dx: Annotated[int, Field(ge=-100, le=100, description="clicks right (+) or left (-)")] = 0,
    dy: Annotated[int, Field(ge=-100, le=100, description="clicks down (+) or up (-)")] = 0,
) -> Acted:
    """Scroll the wheel at (x, y)."""
    async with session_of(ctx).sandboxes.open(id) as sandbox:
        await sandbox.scroll(x, y, dx, dy)
    return Acted(id=id, action="scroll")


async def sandbox_exec(
    ctx: Context[Any, Any],
    id: SandboxId,
    command: Annotated[
        str | list[str],
        Field(description="a string runs in /bin/sh; a list is argv (no shell)"),
    ],
    timeout: Annotated[float, Field(gt=0, le=3600, description="seconds")] = 60.0,
) -> ExecOutput:
    """Run a command inside the sandbox; returns stdout, stderr and the exit code."""
    if isinstance(command, list) and not command:
        raise InvalidParams("command: an empty argv runs nothing", op="sandbox_exec")
    async with session_of(ctx).sandboxes.open(id) as sandbox:
        result = await sandbox.exec(command, timeout=timeout)
    return ExecOutput.model_validate(result.model_dump(include=set(ExecOutput.model_fields)))


async def sandbox_read_file(
    ctx: Context[Any, Any],
    id: SandboxId,
    path: Annotated[str, Field(min_length=1, max_length=4096)],
    binary: Annotated[bool, Field(description="return base64 (for non-text files)")] = False,
) -> FileContent:
    """Read a file inside the sandbox (text, or base64 with binary)."""
    async with session_of(ctx).sandboxes.open(id, act=False) as sandbox:
        data = await sandbox.files.read(path, binary=binary)
    if isinstance(data, bytes):
        return FileContent(path=path, content=base64.b64encode(data).decode(), encoding="base64")
    return FileContent(path=path, content=data, encoding="text")


async def sandbox_write_file(
    ctx: Context[Any, Any],
    id: SandboxId,
    path: Annotated[str, Field(min_length=1, max_length=4096)],
    content: str,
    encoding: Annotated[
        Literal["text", "base64"], Field(description="base64 for binary content")
    ] = "text",
) -> Written:
    """Write a file inside the sandbox (replaces an existing one)."""
    data: str | bytes = content
    if encoding == "base64":
        data = _b64(content)
    async with session_of(ctx).sandboxes.open(id) as sandbox:
        size = await sandbox.files.write(path, data)
    return Written(path=path, size=size)


def _b64(content: str) -> bytes:
    try:
        return base64.b64decode(content, validate=True)
    except ValueError:
        raise InvalidParams("content is not valid base64", op="sandbox_write_file") from None


TOOLS = (
    (sandbox_create, INPUT),
    (sandbox_list, READ_ONLY),
    (sandbox_remove, DESTRUCTIVE),
    (sandbox_screenshot, READ_ONLY),
    (sandbox_click, INPUT),
    (sandbox_type, INPUT),
    (sandbox_key, INPUT),
    (sandbox_scroll, INPUT),
    (sandbox_exec, DESTRUCTIVE),
    (sandbox_read_file, READ_ONLY),
    (sandbox_write_file, DESTRUCTIVE),
)


def register(server: MCPServer[Any]) -> None:
    for fn, hints in TOOLS:
        server.add_tool(tool_errors(fn), name=fn.__name__, annotations=hints)
