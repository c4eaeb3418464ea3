"""Pieces shared by the exporters: how a step's parts are titled and printed."""

from __future__ import annotations

import json
from typing import Any

from hivecell.trace.models import TraceStep


def pretty(value: Any) -> str:
    """JSON values as indented JSON; plain strings as themselves, which reads better."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def title(step: TraceStep) -> str:
    tool = f" · {step.tool}" if step.tool else ""
    action = f" · {step.action}" if step.action else ""
    by = f" by {step.by.label()}" if step.by else ""
    return f"Step {step.step} · {step.kind.value}{tool}{action}{by}"


def metrics(step: TraceStep) -> list[str]:
    """Short facts about a step (time, tokens, latencies), in display order."""
    facts = [step.ts.strftime("%Y-%m-%d %H:%M:%S UTC")]
    if step.tokens is not None:
        facts.append(f"tokens {step.tokens.prompt} in / {step.tokens.completion} out")
    if step.llm_latency_ms is not None:
        facts.append(f"llm {step.llm_latency_ms:.0f} ms")
    if step.tool_latency_ms is not None:
        facts.append(f"tool {step.tool_latency_ms:.0f} ms")
    return facts


def sections(step: TraceStep) -> list[tuple[str, str]]:
    """(label, text) for each filled-in text part of a step, in display order."""
    parts: list[tuple[str, Any]] = [
        ("Reasoning", step.reasoning),
        ("Text", step.text),
        ("Arguments", step.arguments),
        ("Result", step.result),
        ("Error", step.error),
    ]
    return [(label, pretty(value)) for label, value in parts if value is not None]


def totals(steps: list[TraceStep]) -> dict[str, int]:
    prompt = sum(s.tokens.prompt for s in steps if s.tokens)
    completion = sum(s.tokens.completion for s in steps if s.tokens)
    return {"records": len(steps), "prompt_tokens": prompt, "completion_tokens": completion}
