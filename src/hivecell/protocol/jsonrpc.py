"""JSON-RPC 2.0 message shapes and the single place that turns exceptions into wire errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from hivecell.errors import HivecellError, InternalError, InvalidParams, InvalidRequest
from hivecell.protocol import decoding

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

RequestId = int | str


@dataclass(frozen=True, slots=True)
class Request:
    """A call (with ``id``) or a notification (``id`` absent).

    Checked by hand rather than by a pydantic model: it is four fields, and building a
    model at import costs the guest agent tens of milliseconds of cold start.
    """

    method: str
    params: dict[str, Any] | None
    id: RequestId | None
    has_id: bool

    @property
    def is_notification(self) -> bool:
        return not self.has_id


_ALLOWED = frozenset({"jsonrpc", "method", "params", "id"})


MAX_ID_CHARS = 256
_MAX_ID_INT = 2**63


def valid_id(raw_id: Any) -> bool:
    """An id we echo back: a 64-bit integer or a short string (never a bool)."""
    if isinstance(raw_id, bool):
        return False
    if isinstance(raw_id, int):
        return -_MAX_ID_INT <= raw_id < _MAX_ID_INT
    return isinstance(raw_id, str) and len(raw_id) <= MAX_ID_CHARS


def _request_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    if doc.get("jsonrpc") != "2.0":
        problems.append('jsonrpc: must be "2.0"')
    method = doc.get("method")
    if not isinstance(method, str) or not 1 <= len(method) <= 128:
        problems.append("method: must be a string of 1 to 128 characters")
    if doc.get("params") is not None and not isinstance(doc["params"], dict):
        problems.append("params: must be an object (by-position params are not supported)")
    raw_id = doc.get("id")
    if raw_id is not None and not valid_id(raw_id):
        problems.append(
            f"id: must be a 64-bit integer or a string of at most {MAX_ID_CHARS} characters"
        )
    extra = sorted(set(doc) - _ALLOWED)
    if extra:  # names are the peer's: quoted and cut short, never echoed whole
        names = ", ".join(repr(name[:32]) for name in extra[:5])
        problems.append(f"{names}: unknown member(s)")
    return problems


class BadFrame(Exception):
    """A frame that is not a valid request; carries the wire error to send back."""

    def __init__(self, code: int, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_request(frame: bytes) -> Request:
    """Parse one frame into a Request or raise BadFrame with the JSON-RPC code to answer.

    Nothing else escapes: whatever the bytes, the caller gets a Request or a BadFrame.
    """
    try:
        doc = decoding.decode(frame)
    except decoding.DecodeError as exc:
        raise BadFrame(PARSE_ERROR, f"parse error: {exc.message}") from None
    except Exception:  # a decoder bug must cost one frame, never the connection
        raise BadFrame(PARSE_ERROR, "parse error: frame could not be decoded") from None
    if not isinstance(doc, dict):
        raise BadFrame(
            INVALID_REQUEST, "invalid request: expected a JSON object (batches are not supported)"
        )
    raw_id = doc.get("id")
    request_id = raw_id if valid_id(raw_id) else None
    problems = _request_problems(doc)
    if problems:
        raise BadFrame(INVALID_REQUEST, f"invalid request: {'; '.join(problems)}", request_id)
    return Request(doc["method"], doc.get("params"), request_id, "id" in doc)


def describe_validation(exc: ValidationError, limit: int = 5) -> str:
    """Field paths and reasons only: never echo the (possibly huge or hostile) input."""
    parts = []
    for err in exc.errors()[:limit]:
        # unknown keys are the peer's own strings: cut them short
        loc = ".".join(str(p)[:64] for p in err["loc"] if p != "has_id") or "(root)"
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
