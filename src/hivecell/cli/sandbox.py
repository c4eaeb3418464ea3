"""``hivecell sandbox ...``: create, list, exec in, screenshot and remove sandboxes."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from hivecell.cli.common import (
    ALLOW_HELP,
    NETWORK_HELP,
    HomeOption,
    err,
    network_choice,
    out,
    provider,
    run,
    write_stdout,
)
from hivecell.errors import InvalidParams
from hivecell.sandbox.base import NetworkConnection, SandboxInfo, SandboxSpec

app = typer.Typer(help="Create, use and remove sandboxes.", no_args_is_help=True)


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use WIDTHxHEIGHT, e.g. 1280x800") from None
    return width, height


@app.command("create")
def create(
    network: Annotated[str | None, typer.Option(help=NETWORK_HELP)] = None,
    allow: Annotated[list[str] | None, typer.Option("--allow", help=ALLOW_HELP)] = None,
    resolution: Annotated[str, typer.Option(help="WIDTHxHEIGHT")] = "1280x800",
    memory_mb: Annotated[int, typer.Option(help="memory limit in MiB")] = 4096,
    max_pids: Annotated[int, typer.Option(help="process limit")] = 1024,
    cpus: Annotated[float, typer.Option(help="CPU ceiling (a limit, not a reservation)")] = 2.0,
    disk_mb: Annotated[int, typer.Option(help="size cap on home + /shared, in MiB")] = 4096,
    tmpfs_mb: Annotated[int, typer.Option(help="size of /tmp, /var/tmp, /dev/shm each")] = 1024,
    glx: Annotated[bool, typer.Option(help="enable OpenGL (GLX) for apps that need it")] = False,
    desktop: Annotated[
        Literal["full", "minimal"],
        typer.Option(help="full: wallpaper, panel, file manager; minimal: bare openbox"),
    ] = "full",
    inbox_writable: Annotated[
        bool, typer.Option(help="let the sandbox write to /shared/inbox (default read-only)")
    ] = False,
    sandbox_provider: Annotated[
        str, typer.Option("--provider", help="local (bubblewrap box) or qemu (a VM)")
    ] = "local",
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON object")] = False,
    home: Path | None = HomeOption,
) -> None:
    """Create a sandbox and print its id. It keeps running after this command exits."""
    mode, entries = network_choice(network, allow or [])
    width, height = parse_resolution(resolution)
    spec = SandboxSpec(
        width=width,
        height=height,
        network=mode,
        network_allow=entries,
        memory_mb=memory_mb,
        max_pids=max_pids,
        cpus=cpus,
        disk_mb=disk_mb,
        tmpfs_mb=tmpfs_mb,
        glx=glx,
        desktop=desktop,
        inbox_writable=inbox_writable,
    )
    started = time.perf_counter()
    info = run(provider(sandbox_provider, home=home).create, spec)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if as_json:
        print(json.dumps({**info.model_dump(mode="json"), "create_ms": round(elapsed_ms, 1)}))
    else:
        out.print(f"{info.id}  [dim](ready in {elapsed_ms:.0f} ms)[/dim]", highlight=False)


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    home: Path | None = HomeOption,
) -> None:
    """List sandboxes."""
    infos = run(provider(home=home).list)
    if as_json:
        print(json.dumps([i.model_dump(mode="json") for i in infos]))
        return
    out.print(_table(infos))


def _table(infos: list[SandboxInfo]) -> Table:
    table = Table(
        "id", "provider", "status", "network", "screen", "created", "host uid", "shared folder"
    )
    for i in infos:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.created_at))
        screen = f"{i.spec.width}x{i.spec.height}"
        uid = "" if i.host_uid is None else str(i.host_uid)
        row = (i.id, i.provider, i.status, i.spec.network, screen, created, uid, i.shared_dir)
        table.add_row(*row)
    return table


@app.command("info")
def info(sandbox_id: str, home: Path | None = HomeOption) -> None:
    """Print a sandbox's details as JSON (with its host shared_dir, guest_socket, host_uid)."""
    print(run(provider(home=home).info, sandbox_id).model_dump_json(indent=2))


@app.command("network")
def network_log(
    sandbox_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
    home: Path | None = HomeOption,
) -> None:
    """A nat sandbox's outbound connections and DNS questions, allowed and denied."""
    log = run(provider(home=home).network_log, sandbox_id)
    if as_json:
        for connection in log:
            print(connection.model_dump_json())
        return
    out.print(_network_table(log))


def _network_table(log: list[NetworkConnection]) -> Table:
    table = Table("time", "verdict", "proto", "host", "address", "port", "sent", "received")
    for c in log:
        seen = time.strftime("%H:%M:%S", time.localtime(c.time))
        verdict = c.verdict if not c.detail else f"{c.verdict} ({c.detail})"
        address = c.ip or "-"
        table.add_row(
            seen, verdict, c.proto, c.host or "-", address, str(c.port), str(c.sent),
            str(c.received),
        )  # fmt: skip
    return table


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    sandbox_id: str,
    command: Annotated[list[str], typer.Argument(help="program and arguments (after --)")],
    timeout: Annotated[float, typer.Option(help="seconds")] = 600.0,
    cwd: Annotated[str | None, typer.Option(help="working directory inside")] = None,
    home: Path | None = HomeOption,
) -> None:
    """Run a command inside a sandbox; streams its output and exits with its code."""
    code = run(_exec, provider(home=home), sandbox_id, command, timeout, cwd)
    raise typer.Exit(code)


async def _exec(backend, sandbox_id: str, argv: list[str], timeout: float, cwd: str | None) -> int:  # type: ignore[no-untyped-def]
    async def show(stream: str, text: str) -> None:
        if stream == "stdout":
            write_stdout(text)
        else:
            sys.stderr.write(text)

    params = {"argv": argv, "timeout": timeout, "cwd": cwd, "stream": True}
    async with await backend.connect(sandbox_id) as guest:
        result = await guest.call("exec_command", params, timeout=timeout + 10, on_output=show)
    if result["truncated"]:
        err.print("[yellow]output truncated[/yellow]")
    code = int(result["exit_code"])
    return 128 - code if code < 0 else code & 0xFF  # killed by signal N: 128+N, as shells do


@app.command("screenshot")
def screenshot(
    sandbox_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="png | jpeg | webp")] = "png",
    home: Path | None = HomeOption,
) -> None:
    """Save a screenshot of the sandbox's screen."""
    if fmt not in ("png", "jpeg", "webp"):
        raise typer.BadParameter(f"--format {fmt!r}: use png, jpeg or webp")
    data = run(_screenshot, provider(home=home), sandbox_id, fmt)
    output.write_bytes(data)
    out.print(f"wrote {output} ({len(data)} bytes)", highlight=False)


async def _screenshot(backend, sandbox_id: str, fmt: str) -> bytes:  # type: ignore[no-untyped-def]
    async with await backend.connect(sandbox_id) as guest:
        raw = await guest.call("screenshot", {"format": fmt})
    return base64.b64decode(raw["data"])


@app.command("snapshot")
def snapshot(
    sandbox_id: str,
    name: Annotated[str, typer.Argument(help="a name for this moment, e.g. before-install")],
    home: Path | None = HomeOption,
) -> None:
    """Save a running VM's whole state (memory, desktop, disk) as NAME; it keeps running."""
    started = time.perf_counter()
    made = run(provider(home=home).snapshot, sandbox_id, name)
    elapsed = time.perf_counter() - started
    out.print(
        f"snapshot {made.name} of {sandbox_id}: {made.size_bytes / 2**20:.0f} MiB "
        f"[dim](in {elapsed:.1f} s)[/dim]",
        highlight=False,
    )


@app.command("restore")
def restore(sandbox_id: str, name: str, home: Path | None = HomeOption) -> None:
    """Rewind a VM to its snapshot NAME (what it did since is dropped; /shared stays)."""
    started = time.perf_counter()
    run(provider(home=home).restore, sandbox_id, name)
    elapsed = time.perf_counter() - started
    out.print(f"{sandbox_id} is back at {name} [dim](in {elapsed:.1f} s)[/dim]", highlight=False)


@app.command("fork")
def fork(
    sandbox_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON object")] = False,
    home: Path | None = HomeOption,
) -> None:
    """A new VM from a running one's current state (with a copy of its /shared)."""
    child = run(provider(home=home).fork, sandbox_id)
    if as_json:
        print(child.model_dump_json())
    else:
        out.print(child.id, highlight=False)


@app.command("snapshots")
def snapshots(
    sandbox_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    home: Path | None = HomeOption,
) -> None:
    """List a VM's snapshots."""
    found = run(provider(home=home).snapshots, sandbox_id)
    if as_json:
        print(json.dumps([one.model_dump(mode="json") for one in found]))
        return
    table = Table("name", "created", "size")
    for one in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(one.created_at))
        table.add_row(one.name, created, f"{one.size_bytes / 2**20:.0f} MiB")
    out.print(table)


@app.command("snapshot-rm")
def snapshot_rm(sandbox_id: str, name: str, home: Path | None = HomeOption) -> None:
    """Delete a VM's snapshot NAME."""
    run(provider(home=home).delete_snapshot, sandbox_id, name)
    out.print(f"deleted snapshot {name} of {sandbox_id}", highlight=False)


@app.command("rm")
def rm(
    sandbox_ids: Annotated[list[str] | None, typer.Argument(help="ids to remove")] = None,
    all_: Annotated[bool, typer.Option("--all", help="remove every sandbox")] = False,
    home: Path | None = HomeOption,
) -> None:
    """Stop and remove sandboxes: processes, mounts and folders."""
    backend = provider(home=home)
    if all_:
        sandbox_ids = [i.id for i in run(backend.list)]
    if not sandbox_ids:
        if all_:
            return
        run(_raise, InvalidParams("name a sandbox id or pass --all", op="rm"))
    for sandbox_id in sandbox_ids or []:
        run(backend.destroy, sandbox_id)
        out.print(f"removed {sandbox_id}", highlight=False)


async def _raise(exc: Exception) -> None:
    raise exc
