"""``hivecell bench ...``: speed and footprint, as medians and ratios against a peer."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.table import Table

from hivecell.bench.sandbox import (
    IDLE_BOXES,
    TARGETS_MS,
    SandboxReport,
    machine,
    measure_sandbox,
    targets_met,
)
from hivecell.cli.common import HomeOption, err, out, provider, run
from hivecell.config import resolve_home
from hivecell.sandbox.base import SandboxSpec

if TYPE_CHECKING:
    from hivecell.bench import agent as agent_bench
    from hivecell.bench import terminal as terminal_bench

app = typer.Typer(help="Benchmarks (medians over repeated runs).", no_args_is_help=True)

CUA_CACHE = Path("~/.cache/hivecell/bench-cua").expanduser()
# our report field -> the Cua operation measured the same way
PEER_OPS = {
    "screenshot": "screenshot",
    "click": "click",
    "move": "move",
    "exec_true": "exec_true",
    "type_text": "type_text",
}


@app.command("sandbox")
def sandbox(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    vs_cua: Annotated[
        bool, typer.Option("--vs-cua", help="also measure cua-computer-server")
    ] = False,
    runs: Annotated[int, typer.Option(help="repetitions per operation")] = 20,
    cold_runs: Annotated[
        int | None, typer.Option(min=1, help="cold starts to time (default 10; 3 for VMs)")
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="sandboxes requested at once (they boot a few at a time; reports how many "
            "came up, the time, their memory and every failure; default 24, 2 for VMs)",
        ),
    ] = None,
    sandbox_provider: Annotated[
        Literal["local", "qemu"],
        typer.Option("--provider", help="local boxes, or qemu VMs (reported under 'qemu')"),
    ] = "local",
    cua_cache: Annotated[Path, typer.Option(help="venv cache for the Cua peer")] = CUA_CACHE,
    desktop: Annotated[
        Literal["full", "minimal"], typer.Option(help="the sandboxes' desktop profile")
    ] = "full",
    home: Path | None = HomeOption,
) -> None:
    """Cold start, screenshot, click, exec, settle, idle memory, parallel starts."""
    vm = sandbox_provider == "qemu"
    if not as_json:
        err.print(f"measuring hivecell {'VM ' if vm else ''}sandboxes...")
    booting = None
    if vm:  # cold starts boot; the rest start from the template's warm state
        from hivecell.sandbox.qemu.provider import QemuProvider

        booting = QemuProvider(resolve_home(home), warm=False)
    ours = run(
        lambda: measure_sandbox(
            provider(sandbox_provider, home=home),
            runs=runs,
            cold_runs=cold_runs or (3 if vm else 10),
            parallel=parallel or (2 if vm else 24),
            idle_boxes=2 if vm else IDLE_BOXES,
            spec=SandboxSpec(desktop=desktop, provider=sandbox_provider),
            booting=booting,
            warm_runs=(cold_runs or 5) if vm else 0,
        )
    )
    if vm:  # VM figures have their own targets (issue 10), not the local boxes' table
        if as_json:
            print(json.dumps({"machine": machine(), "qemu": ours.model_dump()}, indent=2))
        else:
            out.print(_table(ours, None))
            _print_herd_failures(ours)
        return
    peer = _measure_peer(runs, cua_cache, quiet=as_json) if vs_cua else None
    result = _result(ours, peer)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        out.print(_table(ours, peer))
        _print_herd_failures(ours)


@app.command("a11y")
def a11y(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    runs: Annotated[int, typer.Option(min=1, help="trees to time")] = 20,
    home: Path | None = HomeOption,
) -> None:
    """Accessibility tree of a browser page (Chromium, AT-SPI): median against 150 ms."""
    from hivecell.bench.a11y import measure_a11y

    report = run(lambda: measure_a11y(provider(home=home), runs=runs))
    if as_json:
        print(json.dumps(report.model_dump(), indent=2))
        return
    s = report.browser_tree
    out.print(
        f"accessibility tree of a browser page: median {s.median_ms:.1f} ms (p90 {s.p90_ms:.1f}, "
        f"n={s.n}), {report.nodes} nodes, {report.visited} objects visited; "
        f"target {report.target_ms:.0f} ms: {'met' if report.met else 'NOT met'}",
        highlight=False,
    )


@app.command("agent")
def agent(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    steps: Annotated[int, typer.Option(min=1, help="agent steps to time")] = 50,
    runs: Annotated[int, typer.Option(min=1, help="warm dispatches to time")] = 15,
    home: Path | None = HomeOption,
) -> None:
    """Agent runtime: orchestration overhead per step, and warm dispatch to the model."""
    from hivecell.bench import agent as agent_bench

    if not as_json:
        err.print("measuring the agent runtime (real sandbox, scripted model on loopback)...")
    workdir = resolve_home(home) / "bench" / f"agent-{secrets.token_hex(4)}"
    report = run(
        lambda: agent_bench.measure_agent(
            provider(home=home), workdir, steps=steps, dispatch_runs=runs
        )
    )
    met = agent_bench.targets_met(report)
    if as_json:
        print(json.dumps(_agent_result(report, met), indent=2))
        return
    out.print(_agent_table(report, met))
    out.print("Excluded from the overhead: " + "; ".join(report.excluded) + ".", highlight=False)
    for note in report.notes:
        out.print(f"Note: {note}.", highlight=False)


def _agent_result(report: agent_bench.AgentReport, met: dict[str, bool]) -> dict[str, Any]:
    from hivecell.bench import agent as agent_bench

    return {
        "machine": machine(),
        "agent": report.model_dump(),
        "targets_ms": agent_bench.TARGETS_MS,
        "targets_met": met,
    }


def _agent_table(report: agent_bench.AgentReport, met: dict[str, bool]) -> Table:
    from hivecell.bench import agent as agent_bench

    table = Table("measure", "median ms", "p90", "target", "met")
    rows = [
        ("orchestration overhead / step", "overhead_per_step"),
        ("  step wall time", "step_wall"),
        ("  model latency (client)", "llm_latency"),
        ("  tool latency", "tool_latency"),
        ("  screenshot capture", "screenshot"),
        ("  trace writes (overlapped)", "trace_write"),
        ("warm dispatch", "warm_dispatch"),
    ]
    for label, name in rows:
        stats = getattr(report, name)
        target = agent_bench.TARGETS_MS.get(name)
        verdict = ("yes" if met[name] else "NO") if name in met else ""
        limit = f"≤ {target:g}" if target is not None else ""
        table.add_row(label, f"{stats.median_ms:.3f}", f"{stats.p90_ms:.3f}", limit, verdict)
    for kind, adapter in report.adapters.items():
        for label, stats in (
            (f"{kind}: model call (adapter + SDK + loopback)", adapter.model_round_trip),
            (f"{kind}: overhead / step", adapter.overhead_per_step),
        ):
            table.add_row(label, f"{stats.median_ms:.3f}", f"{stats.p90_ms:.3f}", "", "")
    return table


def _measure_peer(runs: int, cache: Path, *, quiet: bool) -> Any:
    from hivecell.bench.cua import measure_cua

    if not quiet:
        err.print("measuring cua-computer-server (first run installs it into a cached venv)...")
    return run(lambda: measure_cua(runs=runs, workdir=cache))


def _ratios(ours: SandboxReport, peer: Any) -> dict[str, float]:
    ratios = {}
    for mine, theirs in PEER_OPS.items():
        peer_stats = getattr(peer, theirs, None)
        if peer_stats is not None and getattr(ours, mine).median_ms > 0:
            ratios[mine] = round(peer_stats.median_ms / getattr(ours, mine).median_ms, 2)
    return ratios


def _result(ours: SandboxReport, peer: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": machine(),
        "hivecell": ours.model_dump(),
        "targets_ms": TARGETS_MS,
        "targets_met": targets_met(ours),
    }
    if peer is not None:
        result["cua"] = peer.model_dump()
        result["ratio_cua_over_hivecell"] = _ratios(ours, peer)
    return result


def _table(ours: SandboxReport, peer: Any) -> Table:
    table = Table(
        "operation", "hivecell median ms", "p90", "cua median ms", "cua / hivecell", "target"
    )
    ratios = _ratios(ours, peer) if peer is not None else {}
    for name in (
        "cold_start",
        "warm_start",
        "screenshot",
        "screenshot_unchanged",
        "click",
        "move",
        "exec_true",
        "type_text",
        "settle_static",
    ):
        stats = getattr(ours, name)
        if stats is None:  # warm_start: VMs only
            continue
        peer_stats = getattr(peer, PEER_OPS.get(name, ""), None) if peer is not None else None
        table.add_row(
            name,
            f"{stats.median_ms:.2f}",
            f"{stats.p90_ms:.2f}",
            f"{peer_stats.median_ms:.2f}" if peer_stats else "-",
            f"{ratios[name]:.1f}x" if name in ratios else "-",
            f"≤ {TARGETS_MS[name]:g}" if name in TARGETS_MS else "",
        )
    idle = f"idle memory per sandbox, {ours.idle_boxes} up"
    table.add_row(f"{idle}: RSS (MB)", f"{ours.idle_rss_mb:.1f}", "", _peer_rss(peer), "", "")
    table.add_row(f"{idle}: PSS (MB)", f"{ours.idle_pss_mb:.1f}", "", "", "", "≤ 50")
    herd = ours.parallel
    table.add_row("parallel sandboxes up", f"{herd.started}/{herd.tried}", "", "", "", "all")
    table.add_row("  seconds until all answered", f"{herd.seconds_until_all_answered:.1f}")
    table.add_row("  their memory RSS / PSS (MB)", f"{herd.rss_mb:.0f} / {herd.pss_mb:.0f}")
    table.add_row(
        "  host MemAvailable before / after (MB)",
        f"{herd.mem_available_before_mb:.0f} / {herd.mem_available_after_mb:.0f}",
    )
    return table


def _print_herd_failures(ours: SandboxReport) -> None:
    herd = ours.parallel
    if herd.stopped_low_memory:
        err.print(
            f"{herd.stopped_low_memory} creates called off: host MemAvailable fell under the floor"
        )
    for failure in herd.failures:
        err.print(
            f"{failure.count} x {failure.reason}; first:\n{failure.first_message}",
            markup=False,
            highlight=False,
        )


def _peer_rss(peer: Any) -> str:
    return f"{peer.idle_rss_mb:.1f}" if peer is not None else "-"


@app.command("server")
def server(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    clients: Annotated[int, typer.Option(min=1, help="dashboard WebSocket clients")] = 100,
    steps: Annotated[int, typer.Option(min=1, help="agent steps generating events")] = 30,
    takeovers: Annotated[int, typer.Option(min=1, help="take-overs to time")] = 10,
    dispatches: Annotated[
        int, typer.Option(min=1, help="tasks dispatched one by one, warm pool then cold")
    ] = 10,
    tasks: Annotated[
        int | None,
        typer.Option(min=1, help="measure throughput and leaks instead: tasks to run"),
    ] = None,
    concurrent: Annotated[
        int, typer.Option(min=1, max=64, help="with --tasks: slots (the server's max_concurrent)")
    ] = 16,
    home: Path | None = HomeOption,
) -> None:
    """Server: event fan-out latency to many dashboards, pause-to-takeover time and task
    dispatch with and without a warm sandbox; with --tasks, task throughput and what the run
    leaks instead."""
    from hivecell.bench import server as server_bench
    from hivecell.bench.dispatch import TARGET_WARM_MS, measure_dispatch

    if tasks is not None:
        # Only the throughput run: the other measurements' sandboxes would share its memory
        # peak and its leak check, and take minutes the person did not ask for.
        _throughput(tasks, concurrent, as_json=as_json, home=home)
        return
    if not as_json:
        err.print(f"measuring hivecell up: {clients} dashboards, {takeovers} take-overs...")
    workdir = resolve_home(home) / "bench" / f"server-{secrets.token_hex(4)}"
    report = run(
        lambda: server_bench.measure_server(
            workdir, clients=clients, steps=steps, takeovers=takeovers
        )
    )
    dispatch = run(lambda: measure_dispatch(workdir / "dispatch", runs=dispatches))
    met = server_bench.targets_met(report) | {
        "warm_dispatch": dispatch.warm.median_ms <= TARGET_WARM_MS
    }
    result = {
        "machine": machine(),
        "server": report.model_dump(),
        "dispatch": dispatch.model_dump(),
        "targets_met": met,
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("measure", "median ms", "p90", "p99", "target", "met")
    fan = report.fanout_latency
    table.add_row(
        f"event fan-out ({report.clients} clients x {report.events_per_client} events)",
        f"{fan.median_ms:.2f}",
        f"{fan.p90_ms:.2f}",
        f"{report.fanout_p99_ms:.2f}",
        "",
        "",
    )
    control, paused = report.takeover_control, report.takeover_paused
    table.add_row(
        "take over: person has control",
        f"{control.median_ms:.1f}",
        f"{control.p90_ms:.1f}",
        "",
        f"p90 ≤ {server_bench.TARGET_TAKEOVER_MS:g}",
        "yes" if met["takeover"] else "no",
    )
    table.add_row(
        "take over: agent paused", f"{paused.median_ms:.1f}", f"{paused.p90_ms:.1f}", "", "", ""
    )
    for label, stats in (("warm pool", dispatch.warm), ("cold, pool off", dispatch.cold)):
        warm = stats is dispatch.warm
        table.add_row(
            f"dispatch, {label}: POST /tasks -> model",
            f"{stats.median_ms:.1f}",
            f"{stats.p90_ms:.1f}",
            "",
            f"≤ {TARGET_WARM_MS:g}" if warm else "",
            ("yes" if met["warm_dispatch"] else "no") if warm else "",
        )
    out.print(table)
    out.print(
        f"take-over target p90 ≤ {server_bench.TARGET_TAKEOVER_MS:g} ms: "
        f"{'met' if met['takeover'] else 'not met'} (p90 {control.p90_ms:.1f} ms)"
    )


def _throughput(tasks: int, concurrent: int, *, as_json: bool, home: Path | None) -> None:
    from hivecell.bench.throughput import measure_throughput

    if not as_json:
        err.print(f"running {tasks} tasks through {concurrent} slots of hivecell up...")
    workdir = resolve_home(home) / "bench" / f"throughput-{secrets.token_hex(4)}"
    report = run(lambda: measure_throughput(workdir, tasks=tasks, concurrent=concurrent))
    if as_json:
        print(json.dumps({"machine": machine(), "throughput": report.model_dump()}, indent=2))
    else:
        out.print(_throughput_table(report))
        for note in report.notes:
            out.print(f"Note: {note}.", highlight=False)
    if report.leaks_total or report.unexpected or not report.server_exited_cleanly:
        raise typer.Exit(1)  # a leak or a lost task fails the run, as in CI


def _throughput_table(report: Any) -> Table:
    table = Table("measure", "value")
    table.add_row("tasks / minute", f"{report.tasks_per_minute:.1f}")
    table.add_row(
        "dispatch p50 / p99 ms", f"{report.dispatch.p50_ms:.0f} / {report.dispatch.p99_ms:.0f}"
    )
    table.add_row("statuses", ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())))
    table.add_row("unexpected endings", "; ".join(report.unexpected) or "none")
    table.add_row("host memory peak over baseline MB", f"{report.memory.peak_over_baseline_mb:.0f}")
    table.add_row("run processes peak RSS MB", f"{report.memory.run_processes_peak_rss_mb:.0f}")
    table.add_row("server fds before / after", f"{report.fds_before} / {report.fds_after}")
    table.add_row("server exited cleanly", "yes" if report.server_exited_cleanly else "NO")
    for kind, found in report.leaks.model_dump().items():
        table.add_row(f"leaked {kind.replace('_', ' ')}", "; ".join(found) if found else "0")
    return table


@app.command("terminal")
def terminal(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    runs: Annotated[int, typer.Option(min=1, help="sandboxed sessions created to time")] = 5,
    home: Path | None = HomeOption,
) -> None:
    """Coding-agent sessions through `hivecell up`: keystroke echo, output throughput to a
    browser-protocol client, and session creation until the shell answers."""
    from hivecell.bench import terminal as terminal_bench

    if not as_json:
        err.print(f"measuring session terminals through hivecell up ({runs} creates)...")
    workdir = resolve_home(home) / "bench" / f"terminal-{secrets.token_hex(4)}"
    report = run(lambda: terminal_bench.measure_terminal(workdir, runs=runs))
    met = terminal_bench.goals_met(report)
    if as_json:
        print(json.dumps({"terminal": _terminal_result(report, met)}, indent=2))
        return
    out.print(_terminal_table(report, met))
    for note in report.notes:
        out.print(f"Note: {note}.", highlight=False)


def _terminal_result(report: terminal_bench.TerminalReport, met: dict[str, bool]) -> dict[str, Any]:
    from hivecell.bench import terminal as terminal_bench

    echo, create, throughput = report.echo, report.create, report.throughput
    return {
        "echo": {
            "median_ms": echo.median_ms,
            "p90_ms": echo.p90_ms,
            "min_ms": echo.min_ms,
            "keystrokes": echo.n,
        },
        "throughput_mb_s": throughput.mb_s,
        "throughput": throughput.model_dump(exclude={"mb_s"}),
        "create": {
            "median_ms": create.median_ms,
            "p90_ms": create.p90_ms,
            "min_ms": create.min_ms,
            "runs": create.n,
            "first_ms": report.create_first_ms,
        },
        "goals": {
            "echo_median_ms": terminal_bench.GOAL_ECHO_MS,
            "throughput_mb_s": terminal_bench.GOAL_THROUGHPUT_MB_S,
            "create_median_ms": terminal_bench.GOAL_CREATE_MS,
        },
        "met": met,
        "machine": machine(),
        "notes": report.notes,
    }


def _terminal_table(report: terminal_bench.TerminalReport, met: dict[str, bool]) -> Table:
    from hivecell.bench import terminal as terminal_bench

    echo, create, throughput = report.echo, report.create, report.throughput
    table = Table("measure", "median", "p90", "goal", "met")
    table.add_row(
        f"keystroke -> echo ({echo.n} keys)",
        f"{echo.median_ms:.2f} ms",
        f"{echo.p90_ms:.2f} ms",
        f"≤ {terminal_bench.GOAL_ECHO_MS:g} ms",
        "yes" if met["echo"] else "no",
    )
    window = "" if throughput.complete else ", time box"
    table.add_row(
        f"output to the client ({throughput.bytes / 1e6:.1f} MB in "
        f"{throughput.seconds:.1f} s{window})",
        f"{throughput.mb_s:.2f} MB/s",
        "",
        f"≥ {terminal_bench.GOAL_THROUGHPUT_MB_S:g} MB/s",
        "yes" if met["throughput"] else "no",
    )
    table.add_row(
        f"create (sandbox) -> shell answers ({create.n} runs)",
        f"{create.median_ms:.0f} ms",
        f"{create.p90_ms:.0f} ms",
        f"≤ {terminal_bench.GOAL_CREATE_MS:g} ms",
        "yes" if met["create"] else "no",
    )
    return table
