"""``hivecell doctor``: check every system dependency and say how to install what is missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.table import Table

from hivecell.cli.common import HomeOption, out, provider, run
from hivecell.errors import SandboxError
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local import disk, identity, limits, seccomp


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
    Need("dbus-daemon", "dbus-daemon", "dbus-daemon", required=False, why="accessibility tree"),
    # the qemu provider (VM sandboxes) and its templates
    Need("QEMU", "qemu-system-x86_64", "qemu-system-x86", required=False, why="--provider qemu"),
    Need("qemu-img", "qemu-img", "qemu-utils", required=False, why="VM disk overlays"),
    Need("mmdebstrap", "mmdebstrap", "mmdebstrap", required=False, why="hivecell template build"),
    Need("mkfs.ext4", "mkfs.ext4", "e2fsprogs", required=False, why="VM template images"),
)
MODULES = (("Xlib", "python-xlib"), ("mss", "mss"), ("PIL", "pillow"), ("pydantic", "pydantic"))


def doctor(
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke", help="also create a real sandbox, run a command, screenshot, remove it"
        ),
    ] = False,
    home: Path | None = HomeOption,
) -> None:
    """Check what sandboxes need; exits 1 if a sandbox could not start here."""
    table = Table("check", "status", "detail")
    missing = [n.package for n in NEEDS if not _check_binary(table, n) and n.required]
    missing_py = [pkg for mod, pkg in MODULES if not _check_module(table, mod, pkg)]
    broken = [name for name, ok in _host_checks(table) if not ok]
    _check_vms(table, home)
    if smoke and not (missing or broken):
        broken += [] if _smoke(table, home) else ["smoke test"]
    out.print(table)
    if missing:
        out.print(f"install: [bold]sudo apt-get install -y {' '.join(missing)}[/bold]")
    if missing_py:
        out.print(f"install: [bold]uv sync[/bold] (missing {', '.join(missing_py)})")
    if broken:
        out.print(f"[red]sandboxes cannot start here:[/red] {', '.join(broken)} failed (see above)")
    if missing or missing_py or broken:
        raise typer.Exit(1)
    out.print("[green]sandboxes can start here[/green]" + ("" if smoke else " (--smoke proves it)"))


def _host_checks(table: Table) -> list[tuple[str, bool]]:
    return [
        ("namespaces", _check_namespaces(table)),
        ("seccomp", _check_seccomp(table)),
        ("sandbox user", _check_identity(table)),
        ("resource limits", _check_limits(table)),
    ]


def _check_vms(table: Table, home: Path | None) -> None:
    """Informational (VMs are optional): the templates here and KVM or TCG for them."""
    from hivecell.config import resolve_home
    from hivecell.sandbox.qemu import accel
    from hivecell.sandbox.qemu.template import TemplateStore

    if shutil.which("qemu-system-x86_64") is None:
        return  # reported above as optional
    root = resolve_home(home)
    store = TemplateStore(root / "templates")
    found = store.list()
    if not found:
        table.add_row("VM templates", "[yellow]none[/yellow]", "hivecell template build")
        return
    table.add_row("VM templates", "[green]ok[/green]", ", ".join(m.name for m in found))
    choice = accel.choose(store.get(found[0].name).kernel, root / "qemu")
    status = "[green]kvm[/green]" if choice.accel == "kvm" else "[yellow]tcg[/yellow]"
    table.add_row("VM acceleration", status, choice.reason)


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


def _check_namespaces(table: Table) -> bool:
    """The namespaces a sandbox is made of, including a user namespace with a mapped uid."""
    if not shutil.which("bwrap"):
        return True  # reported as missing above
    user = ["--unshare-user", "--uid", "1000", "--gid", "1000"]
    proc = subprocess.run(
        ["bwrap", "--unshare-all", *user, "--ro-bind", "/", "/", "true"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    ok = proc.returncode == 0
    detail = "user/pid/net/ipc/uts namespaces" if ok else (proc.stderr.strip() or "bwrap failed")
    table.add_row("namespaces", "[green]ok[/green]" if ok else "[red]failed[/red]", detail)
    return ok


def _check_seccomp(table: Table) -> bool:
    """The filter every sandbox runs under, and bwrap's lock on nested user namespaces."""
    why = seccomp.unavailable()
    if why is not None:
        why += " (install libseccomp2: sudo apt-get install -y libseccomp2)"
    else:
        size = len(seccomp.program()) // 8  # struct sock_filter is 8 bytes
        detail = f"default filter compiled ({size} BPF instructions, {seccomp.abis()})"
    table.add_row(
        "seccomp", "[green]ok[/green]" if why is None else "[red]failed[/red]", why or detail
    )
    userns = _bwrap_has("--disable-userns")
    status = "[green]ok[/green]" if userns else "[red]failed[/red]"
    detail = "bwrap --disable-userns" if userns else "bwrap is older than 0.8 (no --disable-userns)"
    table.add_row("no nested user namespaces", status, detail)
    return why is None and userns


def _bwrap_has(option: str) -> bool:
    if not shutil.which("bwrap"):
        return False
    proc = subprocess.run(
        ["bwrap", "--help"], capture_output=True, text=True, timeout=10, check=False
    )
    return option in proc.stdout + proc.stderr


def _check_limits(table: Table) -> bool:
    """What a sandbox with the default limits gets here (the provider's own planner)."""
    defaults = SandboxSpec()
    memory = defaults.memory_mb << 20 if defaults.memory_mb else None
    try:
        planned = limits.plan(memory, defaults.max_pids, "probe", cpus=defaults.cpus)
    except (limits.LimitsUnavailable, OSError) as exc:  # create would refuse the same way
        table.add_row("resource limits", "[red]failed[/red]", str(exc))
        return False
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
    return True


def _smoke(table: Table, home: Path | None) -> bool:
    try:
        detail = run(_smoke_run, home)
    except typer.Exit:
        table.add_row("smoke test", "[red]failed[/red]", "see the error above")
        return False
    table.add_row("smoke test", "[green]ok[/green]", detail)
    return True


async def _smoke_run(home: Path | None) -> str:
    """Create, exec, screenshot, destroy: each step timed, the sandbox removed whatever fails."""
    started = time.perf_counter()
    sandboxes = provider(home=home)
    info = await sandboxes.create(SandboxSpec(name="doctor-smoke"))
    try:
        created = time.perf_counter()
        async with await sandboxes.connect(info.id) as guest:
            echoed = await guest.call("exec_command", {"argv": ["echo", "ok"]})
            shot = await guest.call("screenshot", {})
        if echoed["stdout"] != "ok\n" or not shot.get("data"):
            raise SandboxError(f"sandbox {info.id} answered oddly: {echoed}", op="doctor")
    finally:
        with anyio.CancelScope(shield=True):
            await sandboxes.destroy(info.id)
    return (
        f"created in {(created - started) * 1000:.0f} ms, ran echo, took a "
        f"{shot['width']}x{shot['height']} screenshot, removed it"
    )


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
