"""Guest tools of the catalogue's system domain: processes, signals, notifications, volume.

Processes come from /proc (what the sandbox's pid namespace shows). Notifications and
volume need a notification daemon and a sound server; without one the call says so.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import anyio
import anyio.to_thread

from hivecell.errors import InvalidParams, NotFound, NotSupported, ToolFailed
from hivecell.guest.context import CallContext, GuestConfig
from hivecell.guest.dispatch import Router
from hivecell.guest.tools.desktop import proc_command
from hivecell.guest.x11 import display_env
from hivecell.protocol import catalog as c
from hivecell.protocol import methods as m

router = Router()
HELPER_TIMEOUT_S = 10.0


@router.threaded("list_processes")
def list_processes(p: m.Empty, config: GuestConfig) -> c.ProcessList:
    infos = (process_info(int(d.name)) for d in Path("/proc").iterdir() if d.name.isdigit())
    return c.ProcessList(processes=sorted((i for i in infos if i), key=lambda i: i.pid))


def process_info(pid: int) -> c.ProcessInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # exited while we looked
    name, _, rest = stat.partition("(")[2].rpartition(")")
    fields = rest.split()
    rss = re.search(r"^VmRSS:\s+(\d+)", status, re.M)
    return c.ProcessInfo(
        pid=pid, ppid=int(fields[1]), name=name, command=proc_command(pid), state=fields[0],
        rss_kb=int(rss.group(1)) if rss else 0,
    )  # fmt: skip


@router.method("kill_process")
async def kill_process(p: c.KillParams, ctx: CallContext) -> m.Ok:
    if p.pid == os.getpid():
        raise InvalidParams(f"pid {p.pid} is the guest agent itself")
    try:
        os.kill(p.pid, signal.Signals[f"SIG{p.signal}"])
    except ProcessLookupError:
        raise NotFound(f"no process {p.pid}; call list_processes") from None
    except PermissionError as exc:
        raise ToolFailed(f"not allowed to signal pid {p.pid}: {exc}") from exc
    return m.Ok()


@router.method("notify")
async def notify(p: c.NotifyParams, ctx: CallContext) -> m.Ok:
    if not shutil.which("notify-send"):
        raise NotSupported(
            "notify-send is not installed in the sandbox (apt install libnotify-bin)"
        )
    await _helper(ctx, ["notify-send", "--", p.title, p.body], "notify")
    return m.Ok()


@router.method("set_volume")
async def set_volume(p: c.VolumeParams, ctx: CallContext) -> c.Volume:
    if not shutil.which("pactl"):
        raise NotSupported(
            "no sound server tools in the sandbox (pactl from pulseaudio-utils with a "
            "PulseAudio or PipeWire server); the sandbox has no audio output"
        )
    sink = "@DEFAULT_SINK@"
    if p.percent is not None:
        await _helper(ctx, ["pactl", "set-sink-volume", sink, f"{p.percent}%"], "set_volume")
    if p.muted is not None:
        await _helper(ctx, ["pactl", "set-sink-mute", sink, "1" if p.muted else "0"], "set_volume")
    volume = await _helper(ctx, ["pactl", "get-sink-volume", sink], "set_volume")
    muted = await _helper(ctx, ["pactl", "get-sink-mute", sink], "set_volume")
    percent = re.search(r"(\d+)%", volume)
    return c.Volume(percent=int(percent.group(1)) if percent else 0, muted="yes" in muted)


async def _helper(ctx: CallContext, argv: list[str], op: str) -> str:
    """Run a desktop helper on the agent's display and session bus; its stdout."""
    env = display_env(ctx.config.display or ctx.services.x.name, ctx.config.env)
    try:
        with anyio.fail_after(HELPER_TIMEOUT_S):
            done = await anyio.run_process(argv, env=env, check=False, stdin=subprocess.DEVNULL)
    except TimeoutError:
        raise ToolFailed(f"{argv[0]} did not finish within {HELPER_TIMEOUT_S:g} s", op=op) from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[-500:]
        raise NotSupported(f"{argv[0]} failed ({done.returncode}): {err}", op=op)
    return done.stdout.decode(errors="replace")
