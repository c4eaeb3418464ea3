"""``hivecell run "TASK"``: one task in a fresh sandbox, watched from the terminal."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import anyio
import typer
from pydantic import ValidationError

from hivecell.agent.approval import DEFAULT_TOOLS
from hivecell.cli.common import (
    ALLOW_HELP,
    NETWORK_HELP,
    ApiKeyOpt,
    BaseUrlOpt,
    HomeOption,
    ModelOpt,
    ProviderOpt,
    network_choice,
    out,
    run,
)
from hivecell.config import resolve_home

if TYPE_CHECKING:
    from hivecell.agent.llm import ProviderConfig
    from hivecell.agent.runner import RunSettings
    from hivecell.agent.service import TaskRequest, TaskResult
    from hivecell.sandbox.transfer import TransferLimits

# The model client, store and agent are imported inside the commands: together they take
# seconds to import, and every other hivecell command would pay for them.


def run_task(
    task: Annotated[str, typer.Argument(help="what the agent should do, in plain words")],
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    llm: ProviderOpt = None,
    file: Annotated[
        list[Path] | None, typer.Option("--file", help="input file for /shared/inbox")
    ] = None,
    max_steps: Annotated[int, typer.Option(help="stop after this many steps")] = 100,
    timeout: Annotated[float, typer.Option(help="stop after this many seconds")] = 1800.0,
    max_cost: Annotated[
        float | None,
        typer.Option(help="cost budget in USD (needs the model's price: [prices] in config.toml)"),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="token budget (prompt + completion)")
    ] = None,
    network: Annotated[str | None, typer.Option(help=NETWORK_HELP)] = None,
    allow: Annotated[list[str] | None, typer.Option("--allow", help=ALLOW_HELP)] = None,
    disable_tool: Annotated[
        list[str] | None, typer.Option(help="tool the model may not use")
    ] = None,
    tool_domain: Annotated[
        list[str] | None,
        typer.Option(help="tool domain offered to the model (repeat; default: see docs/tools.md)"),
    ] = None,
    approve_tool: Annotated[
        list[str] | None,
        typer.Option(
            help="tool that waits for your approval before each call, besides the default "
            "policy (delete_file, move_file, write_file onto an existing file, destructive "
            "run_shell commands; see docs/tools.md)"
        ),
    ] = None,
    output_dir: Annotated[Path | None, typer.Option(help="where outbox files go")] = None,
    keep: Annotated[bool, typer.Option(help="keep the sandbox afterwards")] = False,
    sandbox_provider: Annotated[
        Literal["local", "qemu"],
        typer.Option(help="local: a bubblewrap box; qemu: a VM (hivecell template build)"),
    ] = "local",
    inbox_writable: Annotated[
        bool, typer.Option(help="let the sandbox write to /shared/inbox (default read-only)")
    ] = False,
    transfer_max_bytes: Annotated[
        int, typer.Option(min=0, help="cap on bytes copied into the inbox / out of the outbox")
    ] = 1024**3,
    transfer_max_files: Annotated[
        int, typer.Option(min=0, help="cap on files copied into the inbox / out of the outbox")
    ] = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="print a final JSON object")] = False,
    observe_tree: Annotated[
        bool, typer.Option(help="show the model the accessibility tree beside each screenshot")
    ] = False,
    home: Path | None = HomeOption,
) -> None:
    """Run a task: create a sandbox, let the agent work, collect outputs and the trace."""
    mode, entries = network_choice(network, allow or [])
    from hivecell.agent.service import TaskRequest
    from hivecell.sandbox.transfer import TransferLimits

    root = resolve_home(home)
    config = run(provider_config, llm, model, base_url, api_key, root)
    request = TaskRequest(
        description=task,
        files=file or [],
        network=mode,
        network_allow=entries,
        settings=run_settings(
            max_steps,
            timeout,
            (max_cost, max_tokens),
            disable_tool or [],
            approve_tool or [],
            domains=tool_domain,
        ).model_copy(
            # a person at the terminal is asked
            update={"pause_at_limits": sys.stdin.isatty(), "observe_tree": observe_tree}
        ),
        output_dir=output_dir,
        keep_sandbox=keep,
        inbox_writable=inbox_writable,
        sandbox_provider=sandbox_provider,
    )
    limits = TransferLimits(max_bytes=transfer_max_bytes, max_files=transfer_max_files)
    result = run(_run, root, config, request, limits)
    _report(result, as_json)
    raise typer.Exit(0 if result.success else 1)


def run_settings(
    max_steps: int,
    timeout: float,
    budget: tuple[float | None, int | None],
    disabled: list[str],
    approve: list[str],
    *,
    domains: list[str] | None = None,
) -> RunSettings:
    from hivecell.agent.runner import RunSettings

    try:
        return RunSettings(
            max_steps=max_steps,
            timeout_s=timeout,
            max_cost_usd=budget[0],
            max_tokens=budget[1],
            disabled_tools=disabled,
            approval_tools=list(dict.fromkeys([*DEFAULT_TOOLS, *approve])),
            **({} if domains is None else {"tool_domains": domains}),
        )
    except ValidationError as exc:  # e.g. --max-steps 0: a usage error, not a traceback
        error = exc.errors(include_url=False)[0]
        raise typer.BadParameter(f"{error['loc'][0]}: {error['msg']}") from None


async def provider_config(
    name: str | None, model: str | None, base_url: str | None, api_key: str | None, home: Path
) -> ProviderConfig:
    from functools import partial

    from hivecell.agent.llm import load_provider
    from hivecell.keystore import KeyStore

    resolve = partial(
        load_provider,
        name,
        model=model,
        base_url=base_url,
        api_key=api_key,
        config_path=home / "config.toml",
        environ=os.environ,
        keyring=lambda provider: KeyStore.detect().get(provider),
    )
    return await anyio.to_thread.run_sync(resolve)  # reads config.toml and the keyring


async def _run(
    home: Path,
    config: ProviderConfig,
    request: TaskRequest,
    limits: TransferLimits,
    retry_of: str | None = None,
) -> TaskResult:
    from hivecell.agent.llm import make_model, require_price
    from hivecell.agent.service import TaskService
    from hivecell.cli.live import LiveConsole
    from hivecell.sandbox.router import ProviderRouter
    from hivecell.store import TaskStore, default_database_url

    if request.settings.max_cost_usd is not None:  # never a silent $0 against a cost budget
        require_price(config.model, config.prices, op="run")
    live = LiveConsole(interactive=sys.stdin.isatty())
    async with TaskStore(default_database_url(home)) as store, make_model(config) as client:
        await store.mark_interrupted()
        service = TaskService(
            home=home,
            provider=ProviderRouter(home, request.sandbox_provider or "local"),
            store=store,
            llm=client,
            model=config.model,
            provider_name=config.name,
            transfer_limits=limits,
        )
        record = await service.create(request)
        if retry_of is not None:  # `hivecell tasks retry`: linked to the task it retries
            record = await store.update(record.id, retry_of=retry_of)
        live.console.print(f"task {record.id}: {request.description}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(live.watch_interrupts)
            result = await service.run(
                record, request, on_event=live.on_event, on_runner=live.attach
            )
            tg.cancel_scope.cancel()
    return result


def _report(result: TaskResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    colour = "green" if result.success else "red"
    out.print(f"[{colour}]{result.status}[/{colour}]: {result.summary}", highlight=False)
    out.print(
        f"{result.steps} steps, {result.prompt_tokens + result.completion_tokens} tokens, "
        f"${result.cost_usd:.4f}, {result.duration_s:.1f} s",
        highlight=False,
    )
    for name in result.artifacts:
        out.print(f"  output: {Path(result.output_dir) / name}", highlight=False)
    report = result.transfer
    if report is not None and report.skipped_count:
        out.print(f"  [yellow]outbox: {report.summary()}[/yellow]", highlight=False)
        for skipped in report.skipped:
            out.print(f"    left out {skipped.path}: {skipped.reason}", highlight=False)
    out.print(f"  trace:  {result.trace_dir}", highlight=False)
