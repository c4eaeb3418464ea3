"""What one model call returns, independent of the wire format it came in."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = Field(0, description="part of prompt_tokens served from cache")


class SafetyCheck(BaseModel):
    """A vendor's reason to have a person confirm a call first (OpenAI's pending_safety_checks)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    code: str | None = None
    message: str | None = None


class ToolCall(BaseModel):
    """One tool call; ``arguments`` is None and ``parse_error`` says why when the JSON is bad.

    Malformed arguments are not an exception: the agent tells the model and lets it retry.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str
    parse_error: str | None = None
    safety_checks: list[SafetyCheck] = Field(
        default_factory=list, description="the call runs only once a person approves these"
    )


class LLMResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None
    reasoning: str | None = Field(None, description="the server's reasoning_content, if any")
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage | None = None
    cost_usd: float | None = None
    latency_ms: float = Field(description="duration of the attempt that succeeded")
    finish_reason: str | None = None
    model: str
    attempts: int = Field(1, description="requests sent, counting retries and fallbacks")
    provider_items: list[dict[str, Any]] = Field(
        default_factory=list,
        description="the vendor's own output items (reasoning included) when its API needs "
        "them sent back verbatim; the runner keeps them in the history beside the tool calls",
    )
