"""Errors of the model endpoint, shaped like every other hivecell error.

``LLMUnavailable`` means "try again later" (the runner pauses the task with it);
``LLMRejected`` means "this request will not work until a setting changes".
"""

from __future__ import annotations

from typing import Any

from hivecell.errors import HivecellError


class LLMError(HivecellError):
    """Base of the model-endpoint errors."""

    code = "llm_error"


class LLMUnavailable(LLMError):
    """The endpoint kept failing (429, 5xx, connection errors, timeouts) past the retries."""

    code = "llm_unavailable"
    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        consecutive_failures: int,
        last_status: int | None,
        op: str = "llm.complete",
        context: dict[str, Any] | None = None,
    ) -> None:
        ctx = {"consecutive_failures": consecutive_failures, "last_status": last_status}
        super().__init__(message, op=op, context={**ctx, **(context or {})})
        self.consecutive_failures = consecutive_failures
        self.last_status = last_status


class LLMRejected(LLMError):
    """The endpoint refused the request (4xx other than 429): retrying cannot help."""

    code = "llm_rejected"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        server_message: str,
        op: str = "llm.complete",
        context: dict[str, Any] | None = None,
    ) -> None:
        ctx = {"status": status, "server_message": server_message}
        super().__init__(message, op=op, context={**ctx, **(context or {})})
        self.status = status
        self.server_message = server_message
