"""What a session's supervisor records in its audit log (``sessions.audit``) besides the
session's life: the lines people type, the processes the agent starts and the files that
change in its working folder.

- Input: typed bytes (from ``session send``, every attach WebSocket, any viewer) are put
  together into lines as a terminal's line editor would see them: Backspace removes a
  character, escape sequences (arrows, bracketed paste markers) are dropped, other control
  keys are written as ``^I``. A line ends at Enter or Ctrl-C (noted as ``^C``); Ctrl-U
  erases it; an unfinished line is cut at ``MAX_LINE`` characters.
- Processes: the supervisor polls ``/proc`` every ``PROCESS_POLL`` seconds for the agent's
  process tree (its descendants and every process of its terminal session) and records each
  new process, and each ``exec`` of a known one, with pid and argv. No ptrace: a process
  that lives shorter than one poll can be missed.
- Files: ``watchfiles`` (inotify underneath, polling when inotify watches run out) reports
  writes and deletes under the working folder, ``.git`` excluded, as paths relative to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import termios
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from hivecell.sessions.audit import Action, AuditLog, Outcome

MAX_LINE = 4096
PROCESS_POLL = 0.2
FILE_DEBOUNCE_MS = 200
NEW_FOLDER_FILES = 1000  # files recorded from inside one batch of new folders, at most

# CSI (ESC [ ... final), SS3 (ESC O x), OSC (ESC ] ... BEL or ST), or ESC and one character.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|O.|\][^\x07\x1b]*(?:\x07|\x1b\\)|.)", re.S)


class LineAssembler:
    """Typed bytes in, finished lines out."""

    def __init__(self) -> None:
        self.line: list[str] = []
        self.pending = b""  # an escape sequence or UTF-8 character split across writes
        self.hidden = False  # part of the line was typed at a password prompt

    def feed(self, data: bytes, hidden: bool = False) -> list[str]:
        """``hidden``: the terminal does not echo (a password prompt): such a line is
        recorded as its length only."""
        self.hidden |= hidden
        done = self._feed(data)
        if done and self.hidden:
            done = [f"[typed with echo off: {len(line)} characters]" for line in done]
            self.hidden = hidden
        return done

    def _feed(self, data: bytes) -> list[str]:
        text, self.pending = _decode(self.pending + data)
        text, self.pending = _hold_escape(text, self.pending)
        done: list[str] = []
        for char in _ESCAPE.sub("", text):
            if char in "\r\n":
                done.append("".join(self.line))
                self.line = []
            elif char in "\x7f\x08":
                if self.line:
                    self.line.pop()
            elif char == "\x03":  # Ctrl-C: the terminal drops the line, so do we (noted)
                done.append("".join(self.line) + "^C")
                self.line = []
            elif char == "\x15":  # Ctrl-U: the line is erased
                self.line = []
            elif ord(char) < 32:
                self.line.append("^" + chr(ord(char) + 64))  # Ctrl-C as ^C, Tab as ^I
            else:
                self.line.append(char)
            if len(self.line) >= MAX_LINE:
                done.append("".join(self.line))
                self.line = []
        return done


def _decode(data: bytes) -> tuple[str, bytes]:
    """Decode what is whole; keep an incomplete UTF-8 character at the end for later."""
    for cut in range(0, min(4, len(data)) + 1):
        head = data[: len(data) - cut]
        try:
            return head.decode("utf-8"), data[len(data) - cut :]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", "replace"), b""


def _hold_escape(text: str, pending: bytes) -> tuple[str, bytes]:
    """An escape sequence cut off at the end of this write waits for the next one."""
    start = text.rfind("\x1b")
    if start < 0 or _ESCAPE.match(text, start) or len(text) - start > 64:
        return text, pending
    return text[:start], text[start:].encode() + pending


def password_prompt(fd: int) -> bool:
    """The terminal reads lines without echoing them: what getpass, sudo and ``read -s``
    set. (Full-screen programs turn echo off too, but read keys, not lines.)"""
    try:
        lflag = termios.tcgetattr(fd)[3]
    except termios.error:
        return False
    return not lflag & termios.ECHO and bool(lflag & termios.ICANON)


# -- processes --------------------------------------------------------------------------
def _stat(pid: str) -> tuple[int, int, str] | None:
    """(ppid, session, start time) of ``pid`` from /proc/PID/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[3]), fields[19].decode()


def process_tree(root: int) -> dict[int, str]:
    """Live descendants of ``root`` and members of its session, ``root`` included:
    pid -> start time (pid and start time together name one process)."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (found := _stat(entry.name)) is not None:
            table[int(entry.name)] = found
    children: dict[int, list[int]] = {}
    for pid, (ppid, _sid, _start) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree = {root} | {p for p, (_ppid, sid, _start) in table.items() if sid == root}
    todo = list(tree)
    while todo:  # descendants that left the session (setsid) are the agent's too
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return {p: table[p][2] for p in tree if p in table}


def argv_of(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw:
        return None  # a kernel thread, or a process between fork and exec
    return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]


class ProcessWatch:
    """New processes (and new argv after an exec) in the agent's tree since the last poll."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], list[str]] = {}

    def poll(self, root: int) -> list[tuple[int, list[str]]]:
        fresh: list[tuple[int, list[str]]] = []
        now: dict[tuple[int, str], list[str]] = {}
        for pid, start in process_tree(root).items():
            key = (pid, start)
            argv = argv_of(pid)
            if argv is None:
                now[key] = self.seen.get(key, [])
                continue
            now[key] = argv
            if self.seen.get(key) != argv:
                fresh.append((pid, argv))
        self.seen = now
        return fresh


# -- the supervisor's side ----------------------------------------------------------------
class SessionRecorder:
    """Everything a supervisor writes to its session's audit log."""

    def __init__(self, folder: Path, session: str, agent: str, cwd: Path, max_bytes: int) -> None:
        self.log = AuditLog(folder, max_bytes=max_bytes)
        self.session, self.agent, self.cwd = session, agent, cwd
        self.lines = LineAssembler()
        self.processes = ProcessWatch()

    def event(
        self,
        action: Action,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
        outcome: Outcome = "allowed",
    ) -> None:
        """Synchronous (one small append): called from the supervisor's event loop on the
        rare events of a session's life and per typed line, like its scrollback writes."""
        # A full disk must not take the agent's terminal down with it.
        with contextlib.suppress(OSError):
            self.log.append(
                session=self.session,
                agent=self.agent,
                action=action,
                target=target,
                detail=detail,
                outcome=outcome,
            )

    def typed(self, data: bytes, fd: int | None = None) -> None:
        """``fd``: the PTY, whose modes tell whether this is typed at a password prompt."""
        for line in self.lines.feed(data, fd is not None and password_prompt(fd)):
            self.event("input", target=line)

    @contextlib.asynccontextmanager
    async def watching(self, root: Callable[[], int | None]) -> AsyncIterator[None]:
        """Record processes and file changes while the block runs."""
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self.watch_processes(root)),
            asyncio.create_task(self.watch_files(stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            tasks[0].cancel()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*tasks), 5)

    async def watch_processes(self, root: Callable[[], int | None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pid = root()
            if pid is not None:
                await loop.run_in_executor(None, self._record_processes, pid)
            await asyncio.sleep(PROCESS_POLL)

    def _record_processes(self, root: int) -> None:
        for pid, argv in self.processes.poll(root):
            self.event("process_spawn", target=argv[0], detail={"pid": pid, "argv": argv})

    async def watch_files(self, stop: asyncio.Event) -> None:
        try:
            await self._watch_files(stop, polling=False)
        except (OSError, RuntimeError) as exc:  # e.g. out of inotify watches: poll instead
            failed: list[tuple[Action, str]] = [("file_write", ".")]
            detail: dict[str, Any] = {"watch": f"inotify failed ({exc}); polling instead"}
            await asyncio.get_running_loop().run_in_executor(
                None, self._record_files, failed, detail
            )
            await self._watch_files(stop, polling=True)

    async def _watch_files(self, stop: asyncio.Event, *, polling: bool) -> None:
        from watchfiles import Change, awatch

        actions: dict[Change, Action] = {
            Change.added: "file_write",
            Change.modified: "file_write",
            Change.deleted: "file_delete",
        }
        loop = asyncio.get_running_loop()
        async for changes in awatch(
            self.cwd,
            watch_filter=self._wanted,
            stop_event=stop,
            debounce=FILE_DEBOUNCE_MS,
            step=50,
            recursive=True,
            force_polling=polling,
            poll_delay_ms=1000,
            ignore_permission_denied=True,
        ):
            found = [(actions[c], self._relative(p)) for c, p in sorted(changes, key=str)]
            added = [p for c, p in changes if c == Change.added]
            found += await loop.run_in_executor(None, self._inside_new_folders, added)
            await loop.run_in_executor(None, self._record_files, list(dict.fromkeys(found)))

    def _inside_new_folders(self, added: list[str]) -> list[tuple[Action, str]]:
        """Files already inside a folder that just appeared: inotify watches a new folder
        only once it is reported, so `mkdir d; echo x > d/f` can write d/f before the
        watch exists and no event ever names it."""
        found: list[tuple[Action, str]] = []
        for folder in map(Path, added):
            if folder.is_symlink() or not folder.is_dir():
                continue
            for top, dirs, files in os.walk(folder):
                dirs[:] = [d for d in dirs if d != ".git"]
                for name in files:
                    path = str(Path(top, name))
                    if self._wanted(None, path):
                        found.append(("file_write", self._relative(path)))
                if len(found) >= NEW_FOLDER_FILES:
                    return found
        return found

    def _record_files(
        self, found: list[tuple[Action, str]], detail: dict[str, Any] | None = None
    ) -> None:
        for action, path in found:
            self.event(action, target=path, detail=detail, outcome="error" if detail else "allowed")

    def _wanted(self, _change: Any, path: str) -> bool:
        relative = Path(path).relative_to(self.cwd) if Path(path).is_relative_to(self.cwd) else None
        return relative is not None and ".git" not in relative.parts

    def _relative(self, path: str) -> str:
        with contextlib.suppress(ValueError):
            return str(Path(path).relative_to(self.cwd))
        return path
