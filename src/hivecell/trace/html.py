"""A trace as one self-contained HTML page: inline CSS, screenshots as data URLs, no scripts.

Everything taken from the trace is HTML-escaped: tool results carry arbitrary web content.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from hivecell.trace.images import data_url
from hivecell.trace.models import TraceStep
from hivecell.trace.reader import TraceReader
from hivecell.trace.render import metrics, sections, title, totals

# Sections longer than this start collapsed so long tool output doesn't bury the steps.
_COLLAPSE_CHARS = 4000

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1rem 2rem;
color:#1d1f23;background:#f6f7f9}
h1{font-size:1.4rem}
.summary{color:#555;margin-bottom:1.5rem}
.step{background:#fff;border:1px solid #dde1e6;border-radius:8px;margin:1rem 0;padding:.8rem 1rem}
.step h2{font-size:1rem;margin:0 0 .3rem}
.kind-error h2,.error pre{color:#b3261e}
.metrics{color:#666;font-size:.85rem;margin-bottom:.5rem}
.label{font-weight:600;margin-top:.6rem}
pre{background:#f0f2f5;border-radius:6px;padding:.6rem;white-space:pre-wrap;
word-break:break-word;margin:.2rem 0;font:12.5px/1.4 ui-monospace,monospace}
img{max-width:100%;border:1px solid #ccd;border-radius:4px;margin-top:.5rem}
.missing{color:#b3261e;font-style:italic}
"""


def export_html(trace_dir: Path) -> str:
    reader = TraceReader(trace_dir)
    loaded = reader.load()
    body = [_summary(loaded.steps, loaded.truncated)]
    body += [_step(step, reader) for step in loaded.steps]
    name = escape(Path(trace_dir).name)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Trace {name}</title><style>{_CSS}</style></head>"
        f"<body><h1>Trace {name}</h1>{''.join(body)}</body></html>\n"
    )


def _summary(steps: list[TraceStep], truncated: bool) -> str:
    facts = totals(steps)
    text = (
        f"{facts['records']} records · {facts['prompt_tokens']} prompt tokens · "
        f"{facts['completion_tokens']} completion tokens"
    )
    if truncated:
        text += " · the last record was cut off when the run stopped"
    return f'<p class="summary">{escape(text)}</p>'


def _step(step: TraceStep, reader: TraceReader) -> str:
    parts = [
        f"<h2>{escape(title(step))}</h2>",
        f'<div class="metrics">{escape(" · ".join(metrics(step)))}</div>',
    ]
    parts += [_section(label, text) for label, text in sections(step)]
    if step.screenshot:
        parts.append(_screenshot(step, reader))
    kind = escape(step.kind.value)
    return f'<section class="step kind-{kind}" id="step-{step.step}">{"".join(parts)}</section>'


def _section(label: str, text: str) -> str:
    css = escape(label.lower())
    block = f"<pre>{escape(text)}</pre>"
    if len(text) > _COLLAPSE_CHARS:
        block = f"<details><summary>{len(text)} characters</summary>{block}</details>"
    return f'<div class="{css}"><div class="label">{escape(label)}</div>{block}</div>'


def _screenshot(step: TraceStep, reader: TraceReader) -> str:
    name = step.screenshot or ""
    data = reader.screenshot(name)
    if data is None:
        return f'<p class="missing">screenshot {escape(name)} is missing</p>'
    alt = escape(f"screenshot of step {step.step} ({name})")
    return f'<img alt="{alt}" src="{data_url(name, data)}">'
