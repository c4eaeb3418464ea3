"""A session's audit log: ``audit.jsonl`` in its folder, one JSON object a line.

Entries have the seed's fields (timestamp, session, agent, action, target, detail, outcome)
and a sequence number ``seq`` that only grows, so readers page with ``after=SEQ`` even
across rotation. Several processes may write (the supervisor, the server, the isolation
code recording a blocked attempt): each entry is one ``write`` on an ``O_APPEND`` file
descriptor under an ``flock`` on ``audit.lock``, which also holds the last ``seq`` and
serialises rotation. A writer killed mid-line leaves a torn line: the next writer starts on
a fresh line and readers skip every line that is not a whole JSON object.

Size cap: once ``audit.jsonl`` would pass ``max_bytes`` it becomes ``audit.1.jsonl`` (the
older ``.1`` becomes ``.2``, and so on up to ``keep``); the oldest is dropped.

Other parts of hivecell record with :func:`record` (e.g. a blocked path)::

    from hivecell.sessions.audit import record
    record(session_folder, "file_read", target="/home/u/.ssh/id_rsa", outcome="blocked",
           session="fix-1", agent="claude-code", detail={"why": "blocked path ~/.ssh"})
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

AUDIT = "audit.jsonl"
LOCK = "audit.lock"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_KEEP = 3  # rotated files kept besides the current one
MAX_FIELD = 4096  # characters of a target or a string detail; longer ones are cut

Action = Literal[
    # the seed's actions
    "file_read",
    "file_write",
    "file_delete",
    "network_request",
    "process_spawn",
    "env_access",
    "permission_change",
    # the session's life and what people typed
    "session_start",
    "session_restart",
    "session_stop",
    "agent_exit",
    "input",
    "merge",
]
Outcome = Literal["allowed", "blocked", "error"]


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1)
    timestamp: datetime
    session: str
    agent: str
    action: Action
    target: str | None = None
    detail: dict[str, Any] | None = None
    outcome: Outcome = "allowed"


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_FIELD:
        return text
    return text[:MAX_FIELD] + "..."


class AuditLog:
    """The audit files of one session folder. Synchronous (small local writes): call it
    from a thread in async code."""

    def __init__(
        self, folder: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        self.folder = folder
        self.max_bytes = max(max_bytes, 4096)
        self.keep = max(keep, 0)

    @property
    def path(self) -> Path:
        return self.folder / AUDIT

    def rotated(self, n: int) -> Path:
        return self.folder / f"audit.{n}.jsonl"

    # -- writing ------------------------------------------------------------------------
    def append(
        self,
        *,
        session: str,
        agent: str,
        action: Action,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
        outcome: Outcome = "allowed",
    ) -> AuditEntry:
        with self._locked() as lock:
            seq = _read_seq(lock) + 1
            entry = AuditEntry(
                seq=seq,
                timestamp=datetime.now(UTC),
                session=session,
                agent=agent,
                action=action,
                target=_cut(target),
                detail=detail,
                outcome=outcome,
            )
            # ensure_ascii: control characters and escapes come out as \uXXXX, never raw.
            line = (json.dumps(entry.model_dump(mode="json"), ensure_ascii=True) + "\n").encode()
            # The seq first: a kill between the two leaves a gap, never a repeated seq.
            os.pwrite(lock, str(seq).encode().ljust(20), 0)
            self._write_line(line)
        return entry

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(
            self.folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing drops the lock

    def _write_line(self, line: bytes) -> None:
        fd = os.open(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            size = os.fstat(fd).st_size
            if size and size + len(line) > self.max_bytes:
                os.close(fd)
                fd = -1
                self._rotate()
                fd = os.open(
                    self.path,
                    os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
                size = 0
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a writer died mid-line: do not glue onto its half
            os.write(fd, line)  # one write: readers see the whole line or none of it
        finally:
            if fd >= 0:
                os.close(fd)

    def _rotate(self) -> None:
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        self.rotated(self.keep).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                self.rotated(n).rename(self.rotated(n + 1))
        self.path.rename(self.rotated(1))

    # -- reading ------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Oldest first."""
        older = [self.rotated(n) for n in range(self.keep, 0, -1)]
        return [p for p in [*older, self.path] if p.is_file()]

    def read(self, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Entries with ``seq > after``, oldest first, at most ``limit``."""
        found: list[AuditEntry] = []
        for path in self.files():
            for entry in _entries(path):
                if entry.seq > after:
                    found.append(entry)
                    if len(found) >= limit:
                        return found
        return found

    def tail(self, count: int) -> list[AuditEntry]:
        """The last ``count`` entries (of the current file, and the previous if needed)."""
        found: list[AuditEntry] = []
        for path in reversed(self.files()):
            found = list(_entries(path)) + found
            if len(found) >= count:
                break
        return found[-count:] if count else []

    def last_seq(self) -> int:
        try:
            fd = os.open(self.folder / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            return _read_seq(fd)
        finally:
            os.close(fd)


def _read_seq(fd: int) -> int:
    raw = os.pread(fd, 32, 0).strip()
    return int(raw) if raw.isdigit() else 0


def _entries(path: Path) -> Iterator[AuditEntry]:
    """Whole, valid lines of ``path``; a torn or damaged line is skipped, not fatal."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone (rotated meanwhile) or a link planted in its place: not an entry
        return
    with os.fdopen(fd, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # torn last line: a writer was killed mid-write (or is writing now)
            try:
                yield AuditEntry.model_validate_json(raw)
            except ValidationError:
                continue


def record(
    folder: Path,
    action: Action,
    *,
    session: str,
    agent: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    outcome: Outcome = "allowed",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> AuditEntry:
    """Append one entry to the audit log of the session whose folder is ``folder``
    (``$HIVECELL_HOME/sessions/NAME``). Safe from any process and thread; synchronous."""
    return AuditLog(folder, max_bytes=max_bytes).append(
        session=session, agent=agent, action=action, target=target, detail=detail, outcome=outcome
    )


async def arecord(folder: Path, action: Action, **fields: Any) -> AuditEntry:
    """:func:`record` for async code (the write runs in a worker thread); same arguments."""
    import functools  # here, not at the top: the supervisor imports this module, never this

    import anyio

    return await anyio.to_thread.run_sync(functools.partial(record, folder, action, **fields))
