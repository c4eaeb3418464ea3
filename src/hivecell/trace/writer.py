"""TraceWriter: appends one durable JSON line per step, plus screenshots and the conversation."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import anyio
from pydantic import BaseModel

from hivecell.errors import InvalidParams
from hivecell.trace.conversation import externalize_images
from hivecell.trace.files import append_visibly, fsync_dir, open_for_append, write_atomically
from hivecell.trace.images import sniff_extension
from hivecell.trace.models import (
    CONVERSATION_FILE,
    SCREENSHOTS_DIR,
    TRACE_FILE,
    StepKind,
    TraceStep,
)


class TraceWriter:
    """Writes ``trace_dir/trace.jsonl``, ``screenshots/`` and ``conversation.json``.

    Each record is handed to the kernel before ``write`` returns, so a killed process loses at
    most the record being written. ``sync`` (and ``close``) fsync them, so a crash of the
    machine loses nothing synced: the agent runner syncs while the model thinks, which keeps
    the disk's flush latency out of the step's path. Reopening an existing trace appends to it.
    """

    def __init__(self, trace_dir: Path) -> None:
        self.trace_dir = Path(trace_dir)
        self._handle: BinaryIO | None = None
        # One lock for every file operation: records must not interleave, and screenshot
        # names are chosen by looking at what already exists.
        self._lock = anyio.Lock()
        self._names_by_digest: dict[str, str] = {}
        self._unsynced = False  # records handed to the kernel since the last fsync
        self._new_file = False  # the trace file was created: its folder's entry is unsynced

    async def write(self, step: TraceStep) -> None:
        line = step.to_line()
        async with self._lock:
            await anyio.to_thread.run_sync(self._append, line)

    async def record(self, step: int, kind: StepKind | str, **fields: Any) -> TraceStep:
        """Build, validate and write a record in one call."""
        record = TraceStep(step=step, kind=StepKind(kind), **fields)
        await self.write(record)
        return record

    async def save_screenshot(self, step: int, png_bytes: bytes) -> str:
        """Store an image under screenshots/ and return the file name to put in a record."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self._save_image, png_bytes, f"step-{step:04d}")

    async def write_conversation(self, messages: Any) -> None:
        """Replace conversation.json with ``messages`` (JSON-like data or pydantic models)."""
        # Serialise now, on the caller's side: the agent may mutate its message list while
        # the worker thread is still busy.
        try:
            snapshot = json.dumps(messages, default=_jsonable)
        except (TypeError, ValueError) as exc:
            raise InvalidParams(str(exc), op="trace.write_conversation") from exc
        async with self._lock:
            await anyio.to_thread.run_sync(self._write_conversation, snapshot)

    async def sync(self) -> None:
        """Make every record written so far durable (fsync)."""
        async with self._lock:
            if self._handle is not None and self._unsynced:
                self._unsynced = False
                await anyio.to_thread.run_sync(self._fsync, self._handle)

    def _fsync(self, handle: BinaryIO) -> None:
        os.fsync(handle.fileno())
        if self._new_file:
            self._new_file = False
            fsync_dir(self.trace_dir)

    async def close(self) -> None:
        await self.sync()
        async with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                await anyio.to_thread.run_sync(handle.close)

    async def __aenter__(self) -> TraceWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _append(self, line: bytes) -> None:
        if self._handle is None:
            self._handle, self._new_file = open_for_append(self.trace_dir / TRACE_FILE)
        append_visibly(self._handle, line)
        self._unsynced = True

    def _save_image(self, data: bytes, stem: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        name = self._known(digest) or self._free_name(stem, sniff_extension(data))
        return self._store(name, data, digest)

    def _save_conversation_image(self, data: bytes) -> str:
        # Bytes already saved as a step screenshot reuse that file; others get a name derived
        # from their content, so rewriting the conversation never stores an image twice.
        digest = hashlib.sha256(data).hexdigest()
        name = self._known(digest) or f"img-{digest[:12]}.{sniff_extension(data)}"
        return self._store(name, data, digest)

    def _known(self, digest: str) -> str | None:
        name = self._names_by_digest.get(digest)
        return name if name and (self.trace_dir / SCREENSHOTS_DIR / name).exists() else None

    def _store(self, name: str, data: bytes, digest: str) -> str:
        path = self.trace_dir / SCREENSHOTS_DIR / name
        if not path.exists():
            write_atomically(path, data)
        self._names_by_digest[digest] = name
        return name

    def _free_name(self, stem: str, extension: str) -> str:
        directory = self.trace_dir / SCREENSHOTS_DIR
        name, counter = f"{stem}.{extension}", 1
        while (directory / name).exists():
            counter += 1
            name = f"{stem}-{counter}.{extension}"
        return name

    def _write_conversation(self, snapshot: str) -> None:
        shrunk = externalize_images(json.loads(snapshot), self._save_conversation_image)
        data = json.dumps(shrunk, indent=1, ensure_ascii=False).encode()
        write_atomically(self.trace_dir / CONVERSATION_FILE, data, durable=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"conversation holds a {type(value).__name__}, which is not JSON")
