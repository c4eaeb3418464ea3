"""Guest tools: run a program (``exec_command``) or a shell command line (``run_shell``).

Each command gets its own process group, so a timeout or a ``cancel`` stops everything it
spawned: SIGTERM to the group, a grace period, then SIGKILL. Output is kept up to
``max_output`` bytes per stream; the rest is still read and thrown away so a chatty child
never blocks on a full pipe. With ``stream`` the kept bytes are also sent as
``exec.output`` notifications while the command runs (so they stop where the kept output
is cut), always before the final result.

A background job (``cmd &``) that inherits the output pipes does not hold the call: once
the main process exits, the pipes get ``DRAIN_SECONDS`` to close, then the call returns
and the job keeps running. Redirect its output (``cmd >/dev/null 2>&1 &``), otherwise it
gets SIGPIPE the next time it writes.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from hivecell.errors import HivecellError, InvalidParams, NotFound, Timeout, ToolFailed
from hivecell.guest.context import CallContext, GuestConfig
from hivecell.guest.dispatch import Router
from hivecell.protocol import methods as m

router = Router()

GRACE_SECONDS = 1.0  # between SIGTERM and SIGKILL
DRAIN_SECONDS = 0.5  # how long pipes may stay open after the main process exited
TAIL_BYTES = 4096  # output tail attached to a Timeout error

Send = Callable[[str, str], Awaitable[None]]


@router.method("exec_command")
async def exec_command(p: m.ExecParams, ctx: CallContext) -> m.ExecResult:
    return await _execute(p.argv, p, ctx, "exec_command")


@router.method("run_shell")
async def run_shell(p: m.RunShellParams, ctx: CallContext) -> m.ExecResult:
    return await _execute([ctx.config.shell, "-c", p.command], p, ctx, "run_shell")


class _Capture:
    """One output stream: its first ``limit`` bytes, a rolling tail, optional streaming."""

    def __init__(self, name: str, limit: int, send: Send | None) -> None:
        self.name = name
        self.limit = limit
        self.kept = bytearray()
        self.tail = b""
        self.truncated = False
        self.closed = anyio.Event()
        self._send = send
        # incremental: a multibyte character split across reads must not become U+FFFD
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    async def pump(self, stream: ByteReceiveStream) -> None:
        try:
            async for chunk in stream:
                await self._take(chunk)
            if self._send is not None and not self.truncated:
                await self._emit(self._decoder.decode(b"", final=True))
        finally:
            self.closed.set()

    async def _take(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-TAIL_BYTES:]
        room = self.limit - len(self.kept)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:room]
        if chunk:
            self.kept += chunk
            if self._send is not None:
                await self._emit(self._decoder.decode(chunk))

    async def _emit(self, text: str) -> None:
        if text and self._send is not None:
            await self._send(self.name, text)

    def text(self) -> str:
        # when cut, drop a character left incomplete by the cut instead of showing U+FFFD
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        return decoder.decode(self.kept, final=not self.truncated)

    def tail_text(self) -> str:
        return self.tail.decode("utf-8", "replace")


async def _execute(
    argv: list[str], p: m.ExecParams | m.RunShellParams, ctx: CallContext, op: str
) -> m.ExecResult:
    started = time.perf_counter()
    send = _sender(ctx) if p.stream else None
    out = _Capture("stdout", p.max_output, send)
    err = _Capture("stderr", p.max_output, send)
    proc = await _spawn(argv, p, ctx.config, op)
    try:
        if not await _communicate(proc, p, out, err):
            raise _timeout_error(p.timeout, out, err, op)
    finally:
        await _finish(proc)
    assert proc.returncode is not None
    return m.ExecResult(
        exit_code=proc.returncode,
        stdout=out.text(),
        stderr=err.text(),
        truncated=out.truncated or err.truncated,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _sender(ctx: CallContext) -> Send:
    async def send(stream: str, text: str) -> None:
        note = {"request_id": ctx.request_id, "stream": stream, "data": text}
        await ctx.notify("exec.output", note)

    return send


async def _spawn(
    argv: list[str], p: m.ExecParams | m.RunShellParams, config: GuestConfig, op: str
) -> Process:
    cwd = _working_dir(p.cwd)
    try:
        return await anyio.open_process(
            argv,
            stdin=subprocess.PIPE if p.stdin is not None else subprocess.DEVNULL,
            cwd=cwd,
            env=_environment(config, p.env),
            start_new_session=True,  # own process group: killpg reaches every descendant
        )
    except OSError as exc:
        raise _spawn_error(exc, argv[0], cwd, op) from None
    except ValueError as exc:  # NUL byte in argv/env, '=' in an env name
        raise InvalidParams(f"cannot start {argv[0]!r}: {exc}", op=op) from None


def _working_dir(raw: str | None) -> str | None:
    # os.path, not Path: an unknown ~user stays as typed and fails as a missing directory
    return os.path.expanduser(raw) if raw is not None else None  # noqa: PTH111


def _environment(config: GuestConfig, extra: dict[str, str] | None) -> dict[str, str] | None:
    """The agent's environment plus the configured and per-call additions.

    None (inherit unchanged) when there is nothing to add: copying os.environ per call is
    measurable on the exec round trip.
    """
    if not extra and not config.env and not config.display:
        return None
    env = {**os.environ, **config.env}
    if config.display:
        env["DISPLAY"] = config.display
    env.update(extra or {})
    return env


def _spawn_error(exc: OSError, program: str, cwd: str | None, op: str) -> HivecellError:
    # subprocess reports a failed chdir with the cwd as filename and a failed exec with
    # the program, so no extra stat is needed before starting
    if cwd is not None and exc.filename == cwd:
        return NotFound(
            f"working directory {cwd!r} does not exist or is not a directory; pass an existing cwd",
            op=op,
            context={"cwd": cwd},
        )
    if isinstance(exc, FileNotFoundError):
        where = "does not exist" if "/" in program else "not found on PATH"
        return NotFound(f"program {program!r} {where}", op=op, context={"program": program})
    return ToolFailed(
        f"cannot start {program!r}: {exc.strerror or exc}", op=op, context={"program": program}
    )


async def _communicate(
    proc: Process, p: m.ExecParams | m.RunShellParams, out: _Capture, err: _Capture
) -> bool:
    """Feed stdin and read both streams until the process exits; False on timeout."""
    with anyio.CancelScope(deadline=anyio.current_time() + p.timeout) as limit:
        async with anyio.create_task_group() as tg:
            if p.stdin is not None and proc.stdin is not None:
                tg.start_soon(_feed, proc.stdin, p.stdin.encode("utf-8", "surrogatepass"))
            assert proc.stdout is not None and proc.stderr is not None
            tg.start_soon(out.pump, proc.stdout)
            tg.start_soon(err.pump, proc.stderr)
            await proc.wait()
            limit.deadline = math.inf  # it finished in time; draining is not "running"
            await _drain(out, err)
            tg.cancel_scope.cancel()
    return not limit.cancelled_caught


async def _feed(stream: ByteSendStream, data: bytes) -> None:
    try:
        if data:
            await stream.send(data)
        await stream.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the child exited or closed stdin without reading everything: its choice


async def _drain(out: _Capture, err: _Capture) -> None:
    with anyio.move_on_after(DRAIN_SECONDS):
        await out.closed.wait()
        await err.closed.wait()


def _timeout_error(timeout: float, out: _Capture, err: _Capture, op: str) -> Timeout:
    return Timeout(
        f"command still running after {timeout:g} s and was killed; pass a larger `timeout` "
        "(up to 3600) or start it in the background",
        op=op,
        context={
            "timeout": timeout,
            "stdout_tail": out.tail_text(),
            "stderr_tail": err.tail_text(),
        },
    )


async def _finish(proc: Process) -> None:
    """Kill the group if the command is still running, then release the pipes."""
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            await _kill_group(proc)
        await proc.aclose()


async def _kill_group(proc: Process) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    with anyio.move_on_after(GRACE_SECONDS):
        await proc.wait()
    # also after a clean exit of the leader: children may ignore SIGTERM
    _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, sig)
