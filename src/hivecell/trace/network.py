"""``network.jsonl`` in a trace: the task's sandbox connections and DNS questions.

One JSON object per line, as the sandbox provider reports them (``NetworkConnection``:
host, address, port, protocol, bytes each way, allowed or denied). Written when the task
ends; while it runs, the API reads the provider's live log instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hivecell.trace.files import write_atomically

NETWORK_FILE = "network.jsonl"


def write_network(trace_dir: Path, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    write_atomically(Path(trace_dir) / NETWORK_FILE, data.encode(), durable=True)


def read_network(trace_dir: Path) -> list[dict[str, Any]] | None:
    """The recorded connections; None when the trace has none (yet)."""
    try:
        text = (Path(trace_dir) / NETWORK_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
