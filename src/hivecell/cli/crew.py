"""``hivecell crew "GOAL" --agents 3``: one goal, several agents in desktops of their own.

Runs in this process like ``hivecell run`` (no server needed). Progress goes to stderr; the
agents' questions and approvals are asked on this terminal one at a time; Ctrl-C cancels
the crew (its tasks end cancelled, its desktops go), twice quits at once.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer

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
from hivecell.cli.run import provider_config, run_settings
from hivecell.config import resolve_home

if TYPE_CHECKING:
    from hivecell.agent.llm import ProviderConfig
    from hivecell.agent.runner import TaskRunner
    from hivecell.cli.live import LiveConsole
    from hivecell.crew.models import Crew, CrewRequest, Member
    from hivecell.crew.runner import CrewRunner


def crew(
    goal: Annotated[str, typer.Argument(help="the goal, in plain words")],
    agents: Annotated[int, typer.Option(min=1, max=8, help="how many agents (desktops)")] = 3,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    llm: ProviderOpt = None,
    file: Annotated[
        list[Path] | None, typer.Option("--file", help="input file for every agent's inbox")
    ] = None,
    max_steps: Annotated[int, typer.Option(help="per TODO: stop after this many steps")] = 100,
    timeout: Annotated[float, typer.Option(help="per TODO: stop after this many seconds")] = 1800.0,
    max_cost: Annotated[
        float | None,
        typer.Option(help="budget of the whole crew in USD (needs the model's price)"),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="per TODO: token budget")] = None,
    network: Annotated[str | None, typer.Option(help=NETWORK_HELP)] = None,
    allow: Annotated[list[str] | None, typer.Option("--allow", help=ALLOW_HELP)] = None,
    disable_tool: Annotated[
        list[str] | None, typer.Option(help="tool the agents may not use")
    ] = None,
    approve_tool: Annotated[
        list[str] | None,
        typer.Option(help="tool that waits for your approval, besides the default policy"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a final JSON object")] = False,
    home: Path | None = HomeOption,
) -> None:
    """Plan a goal into TODOs, let several agents work them, and summarise."""
    from hivecell.crew.models import CrewRequest

    mode, entries = network_choice(network, allow or [])
    for path in file or []:
        if not path.is_file():
            raise typer.BadParameter(f"--file {path}: no such file")
    settings = run_settings(
        max_steps, timeout, (None, max_tokens), disable_tool or [], approve_tool or []
    )
    request = CrewRequest(
        goal=goal,
        agents=agents,
        files=file or [],
        settings=settings,
        network=mode,
        network_allow=entries,
        max_cost_usd=max_cost,
    )
    root = resolve_home(home)
    config = run(provider_config, llm, model, base_url, api_key, root)
    result = run(_run, root, config, request)
    _report(result, as_json)
    raise typer.Exit(0 if result.status == "completed" else 1)


async def _run(home: Path, config: ProviderConfig, request: CrewRequest) -> Crew:
    from hivecell.agent.llm import make_model, require_price
    from hivecell.crew.local import run_here
    from hivecell.sandbox.registry import get_provider
    from hivecell.store import TaskStore, default_database_url

    if request.max_cost_usd is not None:  # never a silent $0 against a cost budget
        require_price(config.model, config.prices, op="crew")
    terminal = _Terminal(interactive=sys.stdin.isatty())
    async with TaskStore(default_database_url(home)) as store, make_model(config) as client:
        await store.mark_interrupted()
        async with anyio.create_task_group() as tg:
            tg.start_soon(terminal.watch_interrupts)
            result = await run_here(
                request,
                home=home,
                provider=get_provider("local", home),
                store=store,
                llm=client,
                on_event=terminal.on_crew_event,
                started=terminal.started,
                watch=terminal.watch,
            )
            tg.cancel_scope.cancel()
    return result


class _Terminal:
    """The crew's progress lines, and one task's question at a time on stdin."""

    def __init__(self, *, interactive: bool) -> None:
        from rich.console import Console

        self.interactive = interactive
        self.console = Console(stderr=True, highlight=False)
        self.runner: CrewRunner | None = None
        self.asking = anyio.Lock()  # two agents asking at once take turns

    def started(self, runner: CrewRunner) -> None:
        self.runner = runner
        self.console.print(f"crew {runner.crew.id}: planning...", markup=False)

    def watch(self, task_id: str) -> _OneTask:
        from hivecell.cli.live import LiveConsole

        return _OneTask(LiveConsole(interactive=self.interactive, console=self.console), self)

    def on_crew_event(self, kind: str, data: dict[str, Any]) -> None:
        line = _line(kind, data)
        if line:
            self.console.print(line, markup=False)

    async def watch_interrupts(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if self.runner is None or self.runner.cancelled:
                    raise KeyboardInterrupt
                self.console.print("\ncancelling the crew (Ctrl-C again quits at once)...")
                self.runner.cancel()


class _OneTask:
    def __init__(self, console: LiveConsole, terminal: _Terminal) -> None:
        self._console = console
        self._terminal = terminal

    def attach(self, runner: TaskRunner) -> None:
        self._console.attach(runner)

    async def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":  # steps of several agents at once would be a blur: not shown
            async with self._terminal.asking:
                await self._console.on_event(kind, data)


def _line(kind: str, data: dict[str, Any]) -> str | None:
    todo = data.get("todo") or {}
    title = f"{todo.get('id')} ({todo.get('title')})"
    lines = {
        "crew.planned": lambda: (
            "plan:\n" + "\n".join(f"  {t['id']}: {t['title']}" for t in data.get("todos", []))
        ),
        "crew.agent_ready": lambda: f"{data.get('agent')}: desktop {data.get('sandbox_id')}",
        "crew.agent_done": lambda: f"{data.get('agent')}: done, closes its desktop",
        "crew.todo_assigned": lambda: f"{todo.get('agent')}: takes {title}",
        "crew.todo_done": lambda: f"{todo.get('agent')}: done {title}: {todo.get('result')}",
        "crew.todo_failed": lambda: f"{todo.get('agent')}: failed {title}: {todo.get('result')}",
        "crew.todo_cancelled": lambda: f"cancelled {title}: {todo.get('result')}",
        "crew.note": lambda: f"note from {data.get('by')}: {data.get('text')}",
        "crew.completed": lambda: f"crew {data.get('status')}",
    }
    make = lines.get(kind)
    return make() if make else None


def _report(result: Crew, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_summary(result), indent=2))
        return
    colour = "green" if result.status == "completed" else "red"
    out.print(f"[{colour}]{result.status}[/{colour}] ${result.cost_usd:.4f}", highlight=False)
    out.print(result.summary, markup=False, highlight=False)
    for todo in result.todos:
        out.print(f"  {todo.status:9} {todo.id}: {todo.title} ({todo.agent})", markup=False)
    out.print(f"  outputs: {result.outputs_dir}", markup=False, highlight=False)


def _summary(result: Crew) -> dict[str, Any]:
    return {
        "crew_id": result.id,
        "status": result.status,
        "summary": result.summary,
        "error": result.error,
        "cost_usd": result.cost_usd,
        "todos": [
            t.model_dump(include={"id", "title", "status", "agent", "task_id", "result"})
            for t in result.todos
        ],
        "agents": [
            {
                "name": m.name,
                "sandbox_id": m.sandbox_id,
                "task_id": m.task_ids[-1] if m.task_ids else None,
            }
            for m in result.members
        ],
        "outputs_dir": str(result.outputs_dir),
    }


def _agent(member: Member) -> dict[str, Any]:
    last = member.task_ids[-1] if member.task_ids else None
    return {"name": member.name, "sandbox_id": member.sandbox_id, "task_id": last}
