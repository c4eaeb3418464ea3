"""TraceReader: loads what a TraceWriter wrote, even if the writer was killed mid-record."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hivecell.trace.errors import TraceCorrupt, TraceNotFound
from hivecell.trace.models import (
    CONVERSATION_FILE,
    SCREENSHOT_NAME,
    SCREENSHOTS_DIR,
    TRACE_FILE,
    TraceStep,
)


class LoadedSteps(BaseModel):
    steps: list[TraceStep]
    # True when a partial last record (a writer killed mid-write) was dropped.
    truncated: bool = False


class TraceReader:
    """Synchronous: async callers should use ``anyio.to_thread.run_sync``."""

    def __init__(self, trace_dir: Path) -> None:
        self.trace_dir = Path(trace_dir)
        if not self.trace_dir.is_dir():
            raise TraceNotFound(f"no trace directory at {self.trace_dir}", op="trace.read")

    def steps(self) -> list[TraceStep]:
        return self.load().steps

    def load(self) -> LoadedSteps:
        path = self.trace_dir / TRACE_FILE
        if not path.exists():
            return LoadedSteps(steps=[])
        return parse_lines(path.read_bytes().splitlines(), source=path)

    def conversation(self) -> Any | None:
        path = self.trace_dir / CONVERSATION_FILE
        return json.loads(path.read_bytes()) if path.exists() else None

    def screenshot(self, name: str) -> bytes | None:
        """Bytes of a screenshot named in a record; None if it is missing or not a bare name."""
        if not re.match(SCREENSHOT_NAME, name):
            return None
        path = self.trace_dir / SCREENSHOTS_DIR / name
        return path.read_bytes() if path.is_file() else None

    def screenshot_names(self) -> list[str]:
        directory = self.trace_dir / SCREENSHOTS_DIR
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if re.match(SCREENSHOT_NAME, p.name))


def parse_lines(lines: list[bytes], *, source: Path) -> LoadedSteps:
    steps: list[TraceStep] = []
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    for index, (number, line) in enumerate(numbered):
        try:
            steps.append(TraceStep.model_validate_json(line))
        except ValidationError as exc:
            if index == len(numbered) - 1:
                return LoadedSteps(steps=steps, truncated=True)
            raise TraceCorrupt(
                f"{source}:{number}: not a trace record: {exc.errors()[0]['msg']}",
                op="trace.read",
                context={"line": number},
            ) from exc
    return LoadedSteps(steps=steps)
