"""JSON-RPC 2.0 message shapes and the single place that turns exceptions into wire errors."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.errors import HivecellError, InternalError, InvalidParams, InvalidRequest

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

RequestId = int | str


class Request(BaseModel):
    """A call (with ``id``) or a notification (``id`` absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jsonrpc: Literal["2.0"]
    method: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] | None = None
    id: RequestId | None = None
    has_id: bool = Field(default=False, exclude=True)

    @property
    def is_notification(self) -> bool:
        return not self.has_id


class Incoming(BaseModel):
    """A response arriving at the client side (result or error)."""

    model_config = ConfigDict(extra="forbid")

    jsonrpc: Literal["2.0"]
    id: RequestId | None
    result: Any = None
    error: dict[str, Any] | None = None


class BadFrame(Exception):
    """A frame that is not a valid request; carries the wire error to send back."""

    def __init__(self, code: int, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_request(frame: bytes) -> Request:
    """Parse one frame into a Request or raise BadFrame with the JSON-RPC code to answer."""
    try:
        doc = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadFrame(PARSE_ERROR, f"parse error: frame is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadFrame(
            INVALID_REQUEST, "invalid request: expected a JSON object (batches are not supported)"
        )
    raw_id = doc.get("id")
    request_id = raw_id if isinstance(raw_id, int | str) and not isinstance(raw_id, bool) else None
    try:
        return Request.model_validate({**doc, "has_id": "id" in doc})
    except ValidationError as exc:
        raise BadFrame(
            INVALID_REQUEST, f"invalid request: {describe_validation(exc)}", request_id
        ) from None


def describe_validation(exc: ValidationError, limit: int = 5) -> str:
    """Field paths and reasons only: never echo the (possibly huge or hostile) input."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"] if p != "has_id") or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def result_message(request_id: RequestId | None, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_message(
    request_id: RequestId | None, code: int, message: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def request_message(request_id: RequestId, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def exception_to_error(request_id: RequestId | None, exc: BaseException, op: str) -> dict[str, Any]:
    """The one boundary where exceptions become wire errors.

    Known errors keep their code and context; anything unexpected becomes an internal
    error without leaking a traceback (the agent logs it).
    """
    if isinstance(exc, ValidationError):
        exc = InvalidParams(
            f"invalid params: {describe_validation(exc)}; see docs/protocol.md#{op}", op=op
        )
    if isinstance(exc, BadFrame):
        exc = InvalidRequest(exc.message, op=op)
    if not isinstance(exc, HivecellError):
        exc = InternalError(
            f"internal error ({type(exc).__name__}); see the guest agent log", op=op
        )
    if not exc.op:
        exc.op = op
    return error_message(request_id, exc.rpc_code, exc.message, exc.to_data())
