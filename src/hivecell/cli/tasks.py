"""``hivecell tasks ...`` and ``hivecell trace export``: history and traces of past tasks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import typer
from rich.table import Table

from hivecell.cli.common import HomeOption, out, run
from hivecell.config import resolve_home
from hivecell.errors import InvalidParams

if TYPE_CHECKING:
    from hivecell.agent.service import TaskRequest
    from hivecell.store import TaskRecord

# The store and trace exporters are imported inside the commands (sqlalchemy and alembic
# take most of a second): other hivecell commands should not pay for them.

app = typer.Typer(help="List and inspect tasks.", no_args_is_help=True)
trace_app = typer.Typer(help="Export task traces.", no_args_is_help=True)
EXPORTS = {"json": "export_json", "md": "export_markdown", "html": "export_html"}
BINARY_EXPORTS = ("zip", "mp4", "webm")  # written to a file, never to the terminal


async def _list(home: Path, status: str | None, search: str | None, limit: int) -> list[TaskRecord]:
    from hivecell.store import TaskStore, default_database_url

    async with TaskStore(default_database_url(home)) as store:
        return await store.list(status=status, search=search, limit=limit)


async def _get(home: Path, task_id: str) -> TaskRecord:
    from hivecell.store import TaskStore, default_database_url

    async with TaskStore(default_database_url(home)) as store:
        return await store.get(task_id)


@app.command("ls")
def ls(
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    search: Annotated[str | None, typer.Option(help="text in the description")] = None,
    limit: Annotated[int, typer.Option(help="newest N")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    home: Path | None = HomeOption,
) -> None:
    """List tasks, newest first."""
    records = run(_list, resolve_home(home), status, search, limit)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table("id", "status", "steps", "tokens", "cost", "created", "description")
    for r in records:
        table.add_row(
            r.id,
            r.status.value,
            str(r.steps),
            str(r.prompt_tokens + r.completion_tokens),
            f"${r.cost_usd:.4f}",
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.description[:60],
        )
    out.print(table)


@app.command("show")
def show(task_id: str, home: Path | None = HomeOption) -> None:
    """Print one task as JSON."""
    print(run(_get, resolve_home(home), task_id).model_dump_json(indent=2))


@trace_app.command("export")
def export(
    task_id: str,
    fmt: Annotated[
        str, typer.Option("--format", help="json | md | html | zip | mp4 | webm")
    ] = "html",
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="file (default stdout; zip/mp4/webm: ./ID.FORMAT)"),
    ] = None,
    home: Path | None = HomeOption,
) -> None:
    """Export a task's trace (md and html include screenshots and tool calls; zip bundles the
    trace, screenshots, conversation and outputs; mp4/webm render the replay as a video)."""
    root = resolve_home(home)
    if fmt in BINARY_EXPORTS:
        target = output or Path(f"{task_id}.{fmt}")
        run(_export_file, root, task_id, fmt, target)
        out.print(f"wrote {target}", highlight=False)
        return
    text = run(_export, root, task_id, fmt)
    if output is None:
        print(text)
        return
    output.write_text(text)
    if fmt == "md":  # markdown links screenshots/ relatively: bring them along
        shots = Path(str(run(_get, root, task_id).trace_dir)) / "screenshots"
        if shots.is_dir():  # a run killed before its first screenshot has none
            shutil.copytree(shots, output.parent / "screenshots", dirs_exist_ok=True)
    out.print(f"wrote {output}", highlight=False)


async def _export(home: Path, task_id: str, fmt: str) -> str:
    import hivecell.trace

    name = EXPORTS.get(fmt)
    if name is None:
        formats = ", ".join([*EXPORTS, *BINARY_EXPORTS])
        raise InvalidParams(f"--format {fmt!r}: use one of {formats}", op="trace export")
    record = await _get(home, task_id)
    exporter = getattr(hivecell.trace, name)
    return str(await anyio.to_thread.run_sync(exporter, Path(str(record.trace_dir))))


async def _export_file(home: Path, task_id: str, fmt: str, target: Path) -> None:
    """ZIP bundle or replay video, written next to ``target`` and renamed into place."""
    from hivecell.errors import NotFound
    from hivecell.trace.bundle import write_bundle
    from hivecell.trace.video import write_video

    record = await _get(home, task_id)
    trace_dir = Path(str(record.trace_dir))
    outputs = Path(record.output_dir) if record.output_dir else None
    partial = target.with_name(f".{target.name}.part")

    def build() -> int:
        with open(partial, "wb") as handle:
            if fmt == "zip":
                write_bundle(trace_dir, outputs, handle)
                return 1
            return write_video(trace_dir, handle, format="webm" if fmt == "webm" else "mp4")

    try:
        if await anyio.to_thread.run_sync(build) == 0:
            raise NotFound(f"task {task_id} has no screenshots to replay", op="trace export")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@app.command("retry")
def retry(
    task_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print a final JSON object")] = False,
    home: Path | None = HomeOption,
) -> None:
    """Run an interrupted, failed or cancelled task again, here, as a new task (retry_of).

    Same description, model, limits, network and tools, on a fresh sandbox like `hivecell
    run`; inbox files come along when the server kept them ($HIVECELL_HOME/inputs/ID)."""
    from hivecell.cli.run import _report, _run, provider_config
    from hivecell.sandbox.transfer import TransferLimits

    root = resolve_home(home)
    record = run(_get, root, task_id)
    request = retry_request(record, root)
    config = run(provider_config, record.provider, record.model, None, None, root)
    result = run(_run, root, config, request, TransferLimits(), record.id)
    _report(result, as_json)
    raise typer.Exit(0 if result.success else 1)


def retry_request(record: TaskRecord, home: Path) -> TaskRequest:
    """The ``TaskRequest`` that runs ``record`` again (InvalidParams if it cannot be retried)."""
    import sys

    from hivecell.agent.runner import RunSettings
    from hivecell.agent.service import TaskRequest
    from hivecell.store import RETRYABLE_STATUSES

    if record.status not in RETRYABLE_STATUSES:
        raise InvalidParams(
            f"task {record.id} is {record.status}: only "
            f"{', '.join(RETRYABLE_STATUSES)} tasks can be retried",
            op="tasks retry",
        )
    kept = record.settings.model_dump(exclude_none=True)
    settings = {k: v for k, v in kept.items() if k in RunSettings.model_fields}
    if record.settings.approve_tools is not None:  # the record says it as the API does
        settings["approval_tools"] = record.settings.approve_tools
    inbox = home / "inputs" / record.id
    files = sorted(p for p in inbox.iterdir() if p.is_file()) if inbox.is_dir() else []
    return TaskRequest(
        description=record.description,
        files=files,
        settings=RunSettings.model_validate(settings | {"pause_at_limits": sys.stdin.isatty()}),
        network=record.settings.network or "offline",
        network_allow=record.settings.network_allow,
        inbox_writable=bool(record.settings.inbox_writable),
    )
