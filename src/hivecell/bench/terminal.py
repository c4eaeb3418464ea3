"""``hivecell bench terminal``: a coding-agent session's terminal, through the real server.

``hivecell up`` runs as its own process on loopback (warm pool off: no desktop boots in the
background); the client is this process speaking the browser's protocol on
``/sessions/{name}/attach`` (``sessions.framing``). Three measures:

- echo: one printable byte typed (a ``stdin`` frame) -> that byte back in a ``stdout`` frame,
  echoed by bash's readline: WebSocket, server, supervisor, PTY and back. Goal: median <= 5 ms.
- throughput: a shell command prints lines; their bytes in ``stdout`` frames over the time
  from a start marker to an end marker (or to the end of a time box). Goal: >= 50 MB/s.
- create: ``POST /sessions`` (a shell in a sandbox) -> attached -> ``echo READY_...`` typed
  -> its output seen. Goal: median <= 1 s.

Echo and throughput use a session with isolation ``none``: a sandboxed agent runs on the same
PTY (no relay in the box), so the bytes take the same path on the host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import websockets
from pydantic import BaseModel, ConfigDict

from hivecell.bench.server import _hivecell_up, _Server
from hivecell.bench.stats import Stats
from hivecell.errors import HivecellError
from hivecell.sessions import framing
from hivecell.sessions.framing import FrameType
from hivecell.sessions.supervisor import running_supervisors

GOAL_ECHO_MS = 5.0  # median
GOAL_THROUGHPUT_MB_S = 50.0
GOAL_CREATE_MS = 1000.0  # median, a shell in a sandbox

KEYSTROKES = 200
KEYS_PER_LINE = 60  # then Enter on a comment line: readline never wraps
KEYS = b"abcdefghijklmnopqrstuvwxyz"
THROUGHPUT_BYTES = 200_000_000  # at the goal's rate this ends inside the time box
THROUGHPUT_WINDOW_S = 5.0  # a slower terminal is measured over this long, then interrupted
LINE = "hivecell-terminal-throughput-" * 3 + "x" * 12  # 99 characters, then "\n"
MB = 1_000_000
STOP_GRACE_S = 10.0  # a leftover supervisor after SIGTERM, before SIGKILL
WAIT_S = 60.0  # any single answer from the shell; far beyond a healthy one
# bash's prompt escape \102 is "B": the prompt shows "[BENCH]$ ", the typed line does not
PROMPT = b"[BENCH]$ "
SET_PROMPT = "PS1='[\\102ENCH]$ '; PROMPT_COMMAND=\r"


class BenchTerminalError(HivecellError):
    code = "bench_terminal_failed"


class Throughput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mb_s: float
    bytes: int  # payload bytes of stdout frames between the markers
    seconds: float
    complete: bool  # False: the time box ended it first


class TerminalReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    echo: Stats
    throughput: Throughput
    create: Stats
    create_first_ms: float  # the first box of a fresh home: usually the slowest
    notes: list[str]


NOTES = [
    "echo: a byte typed -> the same byte in a stdout frame (bash readline echoes it), "
    f"{KEYSTROKES} keystrokes one after another, on a session with isolation none",
    f"throughput: lines of 100 bytes (`yes | head -c {THROUGHPUT_BYTES}`), MB = 10^6 bytes "
    "of stdout payload as the client receives them (the PTY turns each \\n into \\r\\n), over "
    f"the time from a start to an end marker, or over {THROUGHPUT_WINDOW_S:g} s when that "
    "ends first",
    "create: POST /sessions (agent shell, isolation sandbox, network offline) -> attached "
    "-> `echo READY_...` typed -> its output seen; each session destroyed after (untimed)",
    "everything runs on loopback with the client in this process; `hivecell up` has its "
    "warm pool off",
]


def goals_met(report: TerminalReport) -> dict[str, bool]:
    return {
        "echo": report.echo.median_ms <= GOAL_ECHO_MS,
        "throughput": report.throughput.mb_s >= GOAL_THROUGHPUT_MB_S,
        "create": report.create.median_ms <= GOAL_CREATE_MS,
    }


async def measure_terminal(
    home: Path, *, runs: int = 5, keystrokes: int = KEYSTROKES
) -> TerminalReport:
    repo = await _make_repo(home / "bench-repo")
    try:
        async with _hivecell_up(home, ["--pool-size", "0"]) as server:
            name = f"bench-echo-{secrets.token_hex(3)}"
            async with _session(server, name, repo, "none"), _attach(server, name) as term:
                await term.set_prompt()
                echo = await _echo(term, keystrokes)
                throughput = await _throughput(term)
            create = [await _create(server, repo) for _ in range(runs)]
    finally:
        with anyio.CancelScope(shield=True):
            left = await anyio.to_thread.run_sync(_stop_leftovers, home)
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(repo, ignore_errors=True))
    if left:  # a failure above is the story; this one only if all else went well
        raise BenchTerminalError(
            f"session supervisors outlived their DELETE and the server: pids {left}, "
            f"stopped now; their folders stay under {home / 'sessions'}",
            op="bench_terminal",
        )
    return TerminalReport(
        echo=Stats.of(echo),
        throughput=throughput,
        create=Stats.of(create),
        create_first_ms=round(create[0], 3),
        notes=NOTES,
    )


# --- the pieces -----------------------------------------------------------------------------
class _Term:
    """A browser-protocol viewer: stdin frames out, stdout payloads in."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen = b""  # stdout since the last prompt (or key), for markers

    async def type(self, text: bytes | str) -> None:
        data = text.encode() if isinstance(text, str) else text
        await self.ws.send(framing.encode(FrameType.STDIN, data))

    async def stdout(self) -> bytes:
        """The payload of the next stdout frame (control frames are skipped)."""
        while True:
            try:
                message = await self.ws.recv()
            except websockets.ConnectionClosed as exc:
                raise BenchTerminalError(
                    f"the server closed the terminal: {exc.rcvd.reason if exc.rcvd else exc}; "
                    "see bench-server.log (a viewer 4 MB behind is dropped)",
                    op="bench_terminal",
                ) from exc
            if not isinstance(message, bytes):
                raise BenchTerminalError("the server sent text, not a frame", op="bench_terminal")
            frame = framing.decode(message)
            if frame.type is FrameType.STDOUT:
                return frame.payload

    async def until(self, done: Callable[[bytes], bool], what: str) -> None:
        """Reads stdout until ``done(self.seen)``."""
        with anyio.move_on_after(WAIT_S):
            while not done(self.seen):
                self.seen += await self.stdout()
            return
        tail = self.seen[-300:].decode(errors="replace")
        raise BenchTerminalError(
            f"no {what} within {WAIT_S:g} s; the terminal showed last: {tail!r}",
            op="bench_terminal",
        )

    async def at_prompt(self) -> None:
        await self.until(lambda seen: seen.endswith(PROMPT), "prompt")
        self.seen = b""

    async def set_prompt(self) -> None:
        await self.type(SET_PROMPT)
        await self.at_prompt()


@asynccontextmanager
async def _session(server: _Server, name: str, repo: Path, isolation: str) -> AsyncIterator[None]:
    """A shell session, destroyed (with force: its worktree holds nothing) on the way out;
    if the body failed, a failed destroy does not hide why (the sweep after stops it)."""
    body = {"name": name, "agent": "shell", "repo": str(repo), "isolation": isolation}
    await server.post("/sessions", json=body)
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await _destroy(server, name)
        raise
    with anyio.CancelScope(shield=True):
        await _destroy(server, name)


async def _destroy(server: _Server, name: str) -> None:
    response = None
    with anyio.move_on_after(WAIT_S):
        response = await server.http.delete(f"/api/v1/sessions/{name}", params={"force": "true"})
    if response is None:
        raise BenchTerminalError(
            f"DELETE /sessions/{name} got no answer within {WAIT_S:g} s", op="bench_terminal"
        )
    if response.status_code >= 400:
        raise BenchTerminalError(
            f"DELETE /sessions/{name}: {response.status_code} {response.text}",
            op="bench_terminal",
        )


@asynccontextmanager
async def _attach(server: _Server, name: str) -> AsyncIterator[_Term]:
    # tail=0: no scrollback replay; what the shell prints from now on is all this reads
    url = server.ws(f"/sessions/{name}/attach") + "&tail=0"
    async with websockets.connect(url, max_size=None, proxy=None) as ws:
        yield _Term(ws)


async def _echo(term: _Term, keystrokes: int) -> list[float]:
    samples = []
    for n in range(keystrokes):
        if n % KEYS_PER_LINE == 0:
            if n:  # the line so far is a comment: Enter runs nothing, a new prompt follows
                await term.type("\r")
                await term.at_prompt()
            await term.type("#")
            await term.until(lambda seen: seen.endswith(b"#"), "echo of #")
        samples.append(await _keystroke(term, KEYS[n % len(KEYS) : n % len(KEYS) + 1]))
    await term.type("\r")
    await term.at_prompt()
    return samples


async def _keystroke(term: _Term, key: bytes) -> float:
    """Milliseconds from typing ``key`` until its echo arrives."""
    term.seen = b""
    started = time.perf_counter()
    await term.type(key)
    await term.until(lambda seen: key in seen, f"echo of {key.decode()!r}")
    return (time.perf_counter() - started) * 1000


async def _throughput(term: _Term) -> Throughput:
    tag = secrets.token_hex(4)
    start, end = f"START_{tag}".encode(), f"END_{tag}".encode()
    # The typed line shows START_""tag; only the command's output shows START_tag.
    await term.type(
        f'echo START_""{tag}; yes {LINE} | head -c {THROUGHPUT_BYTES}; echo END_""{tag}\r'
    )
    await term.until(lambda seen: start in seen, "start marker")
    began = time.perf_counter()
    after = term.seen.split(start, 1)[1]
    received, last, window = len(after), began, after[-len(end) :]
    complete = end in after
    with anyio.move_on_after(THROUGHPUT_WINDOW_S):
        while not complete:
            chunk = await term.stdout()
            last = time.perf_counter()
            received += len(chunk)
            window = window[-len(end) :] + chunk  # the marker may straddle two frames
            complete = end in window
    if not complete:
        await term.type(b"\x03")  # Ctrl-C stops the flood; the session is destroyed next
    seconds = last - began
    if received == 0 or seconds <= 0:
        raise BenchTerminalError(
            f"no output after the start marker within {THROUGHPUT_WINDOW_S:g} s",
            op="bench_terminal",
        )
    return Throughput(
        mb_s=round(received / MB / seconds, 3),
        bytes=received,
        seconds=round(seconds, 3),
        complete=complete,
    )


async def _create(server: _Server, repo: Path) -> float:
    name = f"bench-create-{secrets.token_hex(3)}"
    tag = secrets.token_hex(4)
    ready = f"READY_{tag}".encode()
    started = time.perf_counter()
    async with _session(server, name, repo, "sandbox"), _attach(server, name) as term:
        await term.type(f'echo READY_""{tag}\r')
        await term.until(lambda seen: ready in seen, "READY marker")
        took = (time.perf_counter() - started) * 1000
    return took  # the destroy on the way out is not timed


async def _make_repo(path: Path) -> Path:
    """A git repository with one empty commit: worktree and sandbox sessions need one."""
    await anyio.Path(path).mkdir(parents=True, exist_ok=True)
    ident = ["-c", "user.name=hivecell bench", "-c", "user.email=bench@hivecell.invalid"]
    for args in (
        ["init", "-q", "-b", "main"],
        [*ident, "commit", "-q", "--allow-empty", "-m", "start"],
    ):
        try:
            done = await anyio.run_process(["git", "-C", str(path), *args], check=False)
        except FileNotFoundError:
            raise BenchTerminalError(
                "sessions need git: apt install git", op="bench_terminal"
            ) from None
        if done.returncode != 0:
            raise BenchTerminalError(
                f"git {' '.join(args)} in {path}: {done.stderr.decode(errors='replace').strip()}",
                op="bench_terminal",
            )
    return path


def _stop_leftovers(home: Path) -> list[int]:
    """Session supervisors of this home still running (none, when every DELETE worked):
    each is asked to stop (SIGTERM: it ends its agent), then killed after a grace."""
    left = _supervisors(home)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while _supervisors(home) and time.monotonic() < deadline:
        time.sleep(0.1)  # in a worker thread
    for pid in _supervisors(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _supervisors(home: Path) -> list[int]:
    """Those this run's server started (the home is the run's own)."""
    return running_supervisors(home)
