"""``hivecell doctor``: check every system dependency and say how to install what is missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from hivecell.cli.common import out
from hivecell.sandbox.local import identity


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
    identity_ok = _check_identity(table)
    out.print(table)
    if missing:
        out.print(f"install: [bold]sudo apt-get install -y {' '.join(missing)}[/bold]")
    if missing_py:
        out.print(f"install: [bold]uv sync[/bold] (missing {', '.join(missing_py)})")
    if missing or missing_py or not identity_ok:
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
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    v1 = Path("/sys/fs/cgroup/memory")
    if v2.exists():
        detail = "cgroups v2"
    elif v1.is_dir():
        detail = "cgroups v1 (memory, pids)"
    else:
        detail = "rlimits only (no writable cgroups)"
    table.add_row("resource limits", "[green]ok[/green]", detail)


def _check_identity(table: Table) -> bool:
    """As root every sandbox runs as its own uid in an unprivileged user namespace."""
    if os.geteuid() != 0:
        table.add_row("sandbox user", "[green]ok[/green]", "maps to you (not root)")
        return True
    why = identity.userns_unavailable()
    if why is None:
        table.add_row("sandbox user", "[green]ok[/green]", "an unprivileged uid of its own")
        return True
    table.add_row("sandbox user", "[red]failed[/red]", f"{why}: enable user namespaces")
    return False
