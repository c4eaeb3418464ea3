"""Errors shared by the guest agent, the host client, the SDK and the CLI.

Every error carries a stable string ``code`` (part of the public contract), the operation
that failed, a context dict and whether retrying can help. Messages say what to change.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HivecellError(Exception):
    """Base of every error hivecell raises on purpose."""

    code: ClassVar[str] = "error"
    rpc_code: ClassVar[int] = -32004
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        op: str = "",
        context: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.op = op
        self.context = dict(context or {})
        self.retryable = self.default_retryable if retryable is None else retryable

    def to_data(self) -> dict[str, Any]:
        return {
            "error": self.code,
            "op": self.op,
            "context": self.context,
            "retryable": self.retryable,
        }

    def __str__(self) -> str:
        where = f"{self.op}: " if self.op else ""
        return f"{where}{self.message}"


class InvalidParams(HivecellError):
    code = "invalid_params"
    rpc_code = -32602


class MethodNotFound(HivecellError):
    code = "method_not_found"
    rpc_code = -32601


class InvalidRequest(HivecellError):
    code = "invalid_request"
    rpc_code = -32600


class InternalError(HivecellError):
    code = "internal_error"
    rpc_code = -32603


class PathDenied(HivecellError):
    code = "path_denied"
    rpc_code = -32001


class Timeout(HivecellError):
    code = "timeout"
    rpc_code = -32002
    default_retryable = True


class TooLarge(HivecellError):
    code = "too_large"
    rpc_code = -32003


class ToolFailed(HivecellError):
    code = "tool_failed"
    rpc_code = -32004


class NotSupported(HivecellError):
    code = "not_supported"
    rpc_code = -32005


class Cancelled(HivecellError):
    code = "cancelled"
    rpc_code = -32006


class Unauthenticated(HivecellError):
    code = "unauthenticated"
    rpc_code = -32007


class NotFound(HivecellError):
    code = "not_found"
    rpc_code = -32008


class Denied(HivecellError):
    """The guest's policy (its agent.toml) refuses this request; not a tool failure."""

    code = "denied"
    rpc_code = -32009


# Host-side errors: never sent by the guest, but share the same shape.
class SandboxError(HivecellError):
    code = "sandbox_error"
    rpc_code = -32010


class SandboxNotFound(SandboxError):
    code = "sandbox_not_found"


class GuestUnavailable(SandboxError):
    code = "guest_unavailable"
    default_retryable = True


class GuestProtocolError(GuestUnavailable):
    """The guest sent bytes the protocol forbids; the host closed the connection.

    A box is untrusted, so this is treated like a lost guest, except that retrying the same
    connection cannot help.
    """

    code = "guest_protocol_error"
    default_retryable = False


class ConfigError(HivecellError):
    code = "config_error"
    rpc_code = -32011


WIRE_ERRORS: dict[str, type[HivecellError]] = {
    cls.code: cls
    for cls in (
        InvalidParams,
        MethodNotFound,
        InvalidRequest,
        InternalError,
        PathDenied,
        Timeout,
        TooLarge,
        ToolFailed,
        NotSupported,
        Cancelled,
        Unauthenticated,
        NotFound,
        Denied,
    )
}

_BY_RPC_CODE: dict[int, type[HivecellError]] = {cls.rpc_code: cls for cls in WIRE_ERRORS.values()}


def from_wire(error: dict[str, Any], *, op: str = "") -> HivecellError:
    """Rebuild the typed exception from a JSON-RPC error object."""
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    assert isinstance(data, dict)
    code = error.get("code")
    cls = WIRE_ERRORS.get(str(data.get("error")))
    if cls is None:
        cls = _BY_RPC_CODE.get(code, ToolFailed) if isinstance(code, int) else ToolFailed
    return cls(
        str(error.get("message", "unknown error")),
        op=str(data.get("op") or op),
        context=data.get("context") if isinstance(data.get("context"), dict) else None,
        retryable=data.get("retryable") if isinstance(data.get("retryable"), bool) else None,
    )
