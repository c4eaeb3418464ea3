"""``hivecell agents ls``: the coding agents sessions can run, and which are installed."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hivecell.cli.common import HomeOption, err, out
from hivecell.config import resolve_home
from hivecell.errors import HivecellError

app = typer.Typer(help="Coding-agent plugins for sessions.", no_args_is_help=True)


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    home: Path | None = HomeOption,
) -> None:
    """List built-in and custom agents with whether each is installed (and its version)."""
    from hivecell.sessions.detect import detect
    from hivecell.sessions.plugins import load_agents

    try:
        agents = load_agents(resolve_home(home) / "agents")
    except HivecellError as exc:
        err.print(f"error [{exc.code}] {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    search_path = os.environ.get("PATH", os.defpath)
    with ThreadPoolExecutor(max_workers=8) as pool:  # each check may take its full timeout
        found = list(pool.map(lambda a: detect(a, search_path), agents.values()))
    rows = [
        {"id": a.id, "name": a.name, "command": a.command, **d.model_dump(), "install": a.install}
        for a, d in zip(agents.values(), found, strict=True)
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "name", "installed", "version", "install")
    for row in rows:
        table.add_row(
            row["id"],
            row["name"],
            "yes" if row["installed"] else "no",
            row["version"] or "",
            "" if row["installed"] else row["install"],
        )
    out.print(table)
