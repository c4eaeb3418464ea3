"""Server-side errors and the one mapping from any error to an HTTP answer.

Every error body has the same shape, whatever raised it (a hivecell error, FastAPI's request
validation, Starlette's 404/405): ``{"error": {"code", "message", "op", "context", "retryable"}}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from hivecell.errors import HivecellError

_STATUS_BY_CODE = {
    "not_found": 404,
    "task_not_found": 404,
    "crew_not_found": 404,
    "sandbox_not_found": 404,
    "trace_not_found": 404,
    "invalid_params": 422,
    "invalid_transition": 409,
    "config_error": 400,
    "path_denied": 403,
    "unauthenticated": 401,
    "conflict": 409,
    "too_large": 413,
    "llm_unavailable": 502,
    "guest_unavailable": 503,
    "sandbox_error": 409,
    "llm_rejected": 502,
    "capacity_exceeded": 429,
    "session_exited": 409,
    "git_error": 409,
}
_CODE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "path_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "capacity_exceeded",
}


class Conflict(HivecellError):
    """The request is valid but the task or sandbox is not in a state that allows it."""

    code = "conflict"


def error_body(
    code: str,
    message: str,
    *,
    op: str = "",
    context: dict[str, Any] | None = None,
    retryable: bool = False,
) -> dict[str, Any]:
    detail = {"code": code, "message": message, "op": op, "context": context or {}}
    return {"error": detail | {"retryable": retryable}}


def to_response(exc: Exception) -> JSONResponse:
    """The single place that decides status and body for every error the API reports."""
    if isinstance(exc, HivecellError):
        status = _STATUS_BY_CODE.get(exc.code, 500)
        body = error_body(
            exc.code, exc.message, op=exc.op, context=exc.context, retryable=exc.retryable
        )
        return JSONResponse(body, status_code=status)
    if isinstance(exc, RequestValidationError):
        return JSONResponse(_validation_body(exc.errors()), status_code=422)
    if isinstance(exc, HTTPException):
        code = _CODE_BY_STATUS.get(exc.status_code, "http_error")
        body = error_body(code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    raise exc


def _validation_body(errors: Any) -> dict[str, Any]:
    problems = [
        {"field": _field(error.get("loc", ())), "message": error.get("msg", "invalid")}
        for error in errors
    ]
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request"
    return error_body("invalid_params", message, op="validate", context={"fields": problems})


def _field(loc: Any) -> str:
    # ("body", "max_steps") -> "max_steps": the body/query prefix is noise for the reader.
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "form")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return to_response(exc)

    for kind in (HivecellError, RequestValidationError, HTTPException):
        app.add_exception_handler(kind, handle)
