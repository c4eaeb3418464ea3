"""``hivecell template build|ls|rm``: the Debian desktop images qemu sandboxes boot from."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.table import Table

from hivecell.cli.common import HomeOption, out, run
from hivecell.config import resolve_home
from hivecell.sandbox.qemu.template import DEFAULT_MIRROR, DEFAULT_NAME, OPTIONS, TemplateStore

app = typer.Typer(help="VM templates for --provider qemu", no_args_is_help=True)


def _store(home: Path | None) -> TemplateStore:
    return TemplateStore(resolve_home(home) / "templates")


@app.command("build")
def build(
    name: Annotated[str, typer.Argument(help="template name")] = DEFAULT_NAME,
    package: Annotated[
        list[str] | None, typer.Option("--package", help="an extra Debian package (repeatable)")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help=f"a package set: {', '.join(OPTIONS)} (repeatable)"),
    ] = None,
    mirror: Annotated[str, typer.Option(help="Debian mirror")] = DEFAULT_MIRROR,
    agent_policy: Annotated[
        Path | None,
        typer.Option(
            help="TOML of the guest agent's own allow/block lists and limits (docs/vm.md)",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    home: Path | None = HomeOption,
) -> None:
    """Build (or rebuild) a Debian 12 desktop template; takes minutes (downloads packages)."""
    store = _store(home)
    started = time.monotonic()
    with out.status("building template", spinner="dots") as status:

        def progress(line: str) -> None:
            status.update(f"[{time.monotonic() - started:4.0f} s] {line[:100]}")

        async def go() -> None:
            await anyio.to_thread.run_sync(
                lambda: store.build(
                    name,
                    packages=package,
                    options=option,
                    mirror=mirror,
                    progress=progress,
                    agent_policy=agent_policy,
                )
            )

        run(go)
    made = store.get(name)
    out.print(
        f"template [bold]{name}[/bold]: kernel {made.manifest.kernel}, "
        f"{made.manifest.image_bytes >> 20} MiB, built in {made.manifest.build_seconds:.0f} s"
    )


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    home: Path | None = HomeOption,
) -> None:
    """List the templates."""
    found = _store(home).list()
    if as_json:
        print(json.dumps([m.model_dump(mode="json") for m in found]))
        return
    table = Table("name", "kernel", "size", "packages", "built", "build time")
    for m in found:
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.built_at))
        table.add_row(
            m.name, m.kernel, f"{m.image_bytes >> 20} MiB", str(len(m.packages)), built,
            f"{m.build_seconds:.0f} s",
        )  # fmt: skip
    out.print(table)


@app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(help="template name")],
    home: Path | None = HomeOption,
) -> None:
    """Remove a template (sandboxes made from it can no longer start)."""

    async def go() -> None:
        await anyio.to_thread.run_sync(_store(home).remove, name)

    run(go)
    out.print(f"removed template {name}")
