"""The one place where hivecell errors become MCP tool errors.

Every tool is wrapped by ``tool_errors``: a ``HivecellError`` becomes an ``isError`` result
that carries hivecell's code, message, op, context and retryable flag, so the client (and the
model behind it) reads what went wrong and what to change, and the server keeps serving.
Resources fail the same way, with ``[code] message`` as the JSON-RPC error's text.
Anything else is left to the SDK, which answers with a generic ``isError`` result and keeps
the traceback on the server (its text may hold host details the client has no business with).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import CallToolResult, TextContent

from hivecell.errors import HivecellError

P = ParamSpec("P")
R = TypeVar("R")


def error_result(exc: HivecellError) -> CallToolResult:
    """``[code] message`` for the model; the structured part for programs."""
    data = exc.to_data() | {"message": exc.message}
    return CallToolResult(
        content=[TextContent(type="text", text=f"[{exc.code}] {exc}")],
        structured_content=data,
        is_error=True,
    )


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | CallToolResult]]:
    """Wrap a tool so its hivecell errors come back as tool errors (the SDK reads the wrapped
    function's signature, so argument validation and schemas are unchanged)."""

    @functools.wraps(fn)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return await fn(*args, **kwargs)
        except HivecellError as exc:
            return error_result(exc)

    return guarded


def resource_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """The same for resources: the read fails with ``[code] message`` (a resource has no
    error result; the SDK answers with a JSON-RPC error carrying this text)."""

    @functools.wraps(fn)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except HivecellError as exc:
            raise ResourceError(f"[{exc.code}] {exc}") from exc

    return guarded
