"""Sorting a failed request: worth retrying (``Retryable``) or a typed ``LLMRejected``.

The hints name the setting that fixes the problem, so the message a person sees in the task's
pause reason tells them what to change.
"""

from __future__ import annotations

import httpx2
import openai

from hivecell.agent.llm.errors import LLMRejected
from hivecell.agent.llm.retry import is_retryable_status, parse_retry_after

# Statuses with which servers refuse ``stream: true`` or ``stream_options`` (and 501, which
# would otherwise be retried as a 5xx): on a streaming request they trigger the fallback.
STREAM_REFUSED = frozenset({400, 404, 405, 415, 422, 501})

_KEY = "--api-key, OPENAI_API_KEY, or api_key/api_key_env in the provider table"
_MODEL = "the model name (--model, HIVECELL_MODEL or model in the provider table)"
_URL = "base_url (--base-url or OPENAI_BASE_URL; OpenAI-compatible servers usually end in /v1)"
_HINTS = {
    401: f"check the API key setting: {_KEY}",
    403: f"the API key is not allowed to use this model: check the key ({_KEY}) and {_MODEL}",
    404: f"check {_MODEL} and {_URL}",
    413: "the request is too large: send fewer or smaller screenshots",
    429: "the account's quota is exhausted: check billing for this API key",
}
_DEFAULT_HINT = f"check that {_MODEL} supports what was sent (images, tools, response_format)"


class Retryable(Exception):
    """One failed attempt that a later attempt may fix."""

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class StreamRefused(Exception):
    """The server will not stream this request; the non-streaming API may work."""


def classify(exc: Exception, *, streaming: bool, model: str) -> Exception:
    """The exception to raise in place of an SDK or transport error."""
    if isinstance(exc, openai.APIStatusError):
        return _from_status(exc, streaming=streaming, model=model)
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return Retryable("the request timed out (timeout_s in the provider table)")
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return Retryable(f"connection failed: {_cause(exc)}")
    # Other APIErrors: an error event in the middle of a stream, an unreadable response.
    return Retryable(f"bad response: {exc}")


def _from_status(exc: openai.APIStatusError, *, streaming: bool, model: str) -> Exception:
    status, message = exc.status_code, server_message(exc)
    if streaming and status in STREAM_REFUSED:
        return StreamRefused(message)
    if is_retryable_status(status) and not _quota_exhausted(exc):
        retry_after = parse_retry_after(exc.response.headers)
        return Retryable(f"HTTP {status}: {message}", status=status, retry_after=retry_after)
    hint = _HINTS.get(status, _DEFAULT_HINT)
    return LLMRejected(
        f"the model endpoint refused the request (HTTP {status}: {message}); {hint}",
        status=status,
        server_message=message,
        context={"model": model},
    )


def server_message(exc: openai.APIStatusError) -> str:
    """The server's own words: OpenAI's ``error.message``, else the body, shortened."""
    body = exc.body
    if isinstance(body, dict):
        text = body.get("message") or body.get("error") or body
    else:
        text = body or exc.message  # the SDK's message when the body was empty or unread
    return str(text)[:500]


def _quota_exhausted(exc: openai.APIStatusError) -> bool:
    # OpenAI answers 429 "insufficient_quota" when billing is exhausted: waiting won't help.
    body = exc.body
    return (
        exc.status_code == 429
        and isinstance(body, dict)
        and body.get("code") == "insufficient_quota"
    )


def _cause(exc: Exception) -> str:
    inner = exc.__cause__ or exc
    return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
