"""``hivecell doctor``: check every system dependency and say how to install what is missing."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from hivecell.cli.common import out
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local import disk, limits


@dataclass(frozen=True)
class Need:
    what: str
    binary: str
    package: str
    required: bool = True
    why: str = ""


NEEDS = (
    Need("bubblewrap", "bwrap", "bubblewrap", why="sandbox namespaces"),
    Need("Xvfb", "Xvfb", "xvfb", why="virtual display"),
    Need("openbox", "openbox", "openbox", why="window manager"),
    Need("xclip", "xclip", "xclip", why="clipboard"),
    Need("x11vnc", "x11vnc", "x11vnc", why="live desktop view"),
    Need("wmctrl", "wmctrl", "wmctrl", required=False, why="window control fallback"),
    Need("xdotool", "xdotool", "xdotool", required=False, why="debugging input"),
    Need("slirp4netns", "slirp4netns", "slirp4netns", required=False, why="--network nat"),
    Need("nftables", "nft", "nftables", required=False, why="--network nat: host filter"),
    Need("xterm", "xterm", "xterm", required=False, why="a terminal app inside sandboxes"),
    Need("mousepad", "mousepad", "mousepad", required=False, why="a text editor inside sandboxes"),
    Need("chromium", "chromium", "chromium", required=False, why="a browser inside sandboxes"),
)
MODULES = (("Xlib", "python-xlib"), ("mss", "mss"), ("PIL", "pillow"), ("pydantic", "pydantic"))


def doctor() -> None:
    """Check system dependencies; exits 1 if a required one is missing."""
    table = Table("check", "status", "detail")
    missing = [n.package for n in NEEDS if not _check_binary(table, n) and n.required]
    missing_py = [pkg for mod, pkg in MODULES if not _check_module(table, mod, pkg)]
    _check_namespaces(table)
    _check_limits(table)
    out.print(table)
    if missing:
        out.print(f"install: [bold]sudo apt-get install -y {' '.join(missing)}[/bold]")
    if missing_py:
        out.print(f"install: [bold]uv sync[/bold] (missing {', '.join(missing_py)})")
    if missing or missing_py:
        raise typer.Exit(1)
    out.print("[green]all required dependencies are present[/green]")


def _check_binary(table: Table, need: Need) -> bool:
    path = shutil.which(need.binary)
    status = (
        "[green]ok[/green]"
        if path
        else ("[red]missing[/red]" if need.required else "[yellow]optional[/yellow]")
    )
    detail = path or f"apt-get install {need.package}  ({need.why})"
    table.add_row(need.what, status, detail)
    return path is not None


def _check_module(table: Table, module: str, package: str) -> bool:
    found = importlib.util.find_spec(module) is not None
    table.add_row(f"python: {package}", "[green]ok[/green]" if found else "[red]missing[/red]", "")
    return found


def _check_namespaces(table: Table) -> None:
    if not shutil.which("bwrap"):
        return
    proc = subprocess.run(
        ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    ok = proc.returncode == 0
    detail = "user/pid/net/ipc/uts namespaces" if ok else (proc.stderr.strip() or "bwrap failed")
    table.add_row("namespaces", "[green]ok[/green]" if ok else "[red]failed[/red]", detail)


def _check_limits(table: Table) -> None:
    """What a sandbox with the default limits gets here (the planner only reads files)."""
    defaults = SandboxSpec()
    memory = defaults.memory_mb << 20 if defaults.memory_mb else None
    try:
        planned = limits.plan(memory, defaults.max_pids, "probe", cpus=defaults.cpus)
    except limits.LimitsUnavailable as exc:
        table.add_row("resource limits", "[red]no process cap[/red]", str(exc))
    else:
        partial = limits.UNENFORCED in planned.describe() or planned.memory == "rlimit"
        status = "[yellow]partial[/yellow]" if partial else "[green]ok[/green]"
        where = f"; cgroups in {Path(planned.cgroups[0]).parent}" if planned.cgroups else ""
        table.add_row("resource limits", status, planned.describe() + where)
    why = disk.why_not_image()
    if why:
        detail = f"watch ({why}): a box over disk_mb is stopped, files over it refused"
        table.add_row("disk cap", "[yellow]partial[/yellow]", detail)
    else:
        table.add_row("disk cap", "[green]ok[/green]", "image: ext4 loop mount, ENOSPC at disk_mb")
