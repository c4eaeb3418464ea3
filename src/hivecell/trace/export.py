"""Exports for sharing a trace: JSON for tools, Markdown for people.

Markdown links screenshots relatively (``screenshots/NAME``) so it renders next to the trace
directory (and inside the ZIP bundle) and stays small; ``embed_images=True`` puts each screenshot
in as a ``data:`` URI instead, for a single self-contained file (the API's ``format=md``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hivecell.trace.images import data_url
from hivecell.trace.models import SCREENSHOTS_DIR, TraceStep
from hivecell.trace.reader import TraceReader
from hivecell.trace.render import metrics, sections, title, totals

EXPORT_FORMAT = "hivecell-trace"
EXPORT_VERSION = 1


def export_json(trace_dir: Path) -> str:
    reader = TraceReader(trace_dir)
    loaded = reader.load()
    document = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "truncated": loaded.truncated,
        "steps": [step.model_dump(mode="json", exclude_none=True) for step in loaded.steps],
        "screenshots": reader.screenshot_names(),
        "conversation": reader.conversation(),
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def export_markdown(trace_dir: Path, *, embed_images: bool = False) -> str:
    reader = TraceReader(trace_dir)
    loaded = reader.load()
    summary = totals(loaded.steps)
    lines = [
        f"# Trace {Path(trace_dir).name}",
        "",
        f"{summary['records']} records · {summary['prompt_tokens']} prompt tokens · "
        f"{summary['completion_tokens']} completion tokens",
        "",
    ]
    if loaded.truncated:
        lines += ["*The last record was cut off when the run stopped.*", ""]
    for step in loaded.steps:
        lines += _markdown_step(step, reader if embed_images else None)
    return "\n".join(lines)


def _markdown_step(step: TraceStep, embed_from: TraceReader | None) -> list[str]:
    lines = [f"## {title(step)}", "", " · ".join(metrics(step)), ""]
    for label, text in sections(step):
        lines += [f"**{label}**", "", *_fenced(text), ""]
    if step.screenshot:
        lines += [f"![step {step.step}]({_image_target(step.screenshot, embed_from)})", ""]
    return lines


def _image_target(name: str, embed_from: TraceReader | None) -> str:
    if embed_from is None:
        return f"{SCREENSHOTS_DIR}/{name}"
    data = embed_from.screenshot(name)
    # A screenshot missing from disk gets an empty target rather than a link that can't resolve.
    return "" if data is None else data_url(name, data)


def _fenced(text: str) -> list[str]:
    # A fence longer than any backtick run inside keeps model output from closing it early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]
