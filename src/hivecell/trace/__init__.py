"""Task traces: a durable per-step log with screenshots, and exports to JSON, Markdown, HTML."""

from hivecell.trace.errors import TraceCorrupt, TraceNotFound
from hivecell.trace.export import export_json, export_markdown
from hivecell.trace.html import export_html
from hivecell.trace.models import (
    CONVERSATION_FILE,
    SCREENSHOTS_DIR,
    TRACE_FILE,
    Actor,
    StepKind,
    Tokens,
    TraceStep,
)
from hivecell.trace.network import NETWORK_FILE, read_network, write_network
from hivecell.trace.reader import LoadedSteps, TraceReader
from hivecell.trace.writer import TraceWriter

__all__ = [
    "CONVERSATION_FILE",
    "NETWORK_FILE",
    "SCREENSHOTS_DIR",
    "TRACE_FILE",
    "Actor",
    "LoadedSteps",
    "StepKind",
    "Tokens",
    "TraceCorrupt",
    "TraceNotFound",
    "TraceReader",
    "TraceStep",
    "TraceWriter",
    "export_html",
    "export_json",
    "export_markdown",
    "read_network",
    "write_network",
]
