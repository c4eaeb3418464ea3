"""The ``hivecell`` command."""

from __future__ import annotations

import typer

from hivecell.cli import (
    agents,
    bench,
    crew,
    doctor,
    mcp,
    run,
    sandbox,
    session,
    tasks,
    template,
    up,
)
from hivecell.homedir import private_umask

app = typer.Typer(
    name="hivecell",
    help="Run AI agents in isolated Linux desktop sandboxes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _private_files() -> None:
    """Run AI agents in isolated Linux desktop sandboxes."""
    # Whatever any command creates under $HIVECELL_HOME (database, traces, outputs) is
    # private from the start; `hivecell up` also fixes what older runs left readable.
    private_umask()


app.add_typer(sandbox.app, name="sandbox")
app.add_typer(template.app, name="template")
app.add_typer(bench.app, name="bench")
app.command("doctor")(doctor.doctor)
app.command("run")(run.run_task)
app.command("crew")(crew.crew)
app.command("up")(up.up)
app.command("mcp")(mcp.mcp)
app.add_typer(tasks.app, name="tasks")
app.add_typer(tasks.trace_app, name="trace")
app.add_typer(agents.app, name="agents")
app.add_typer(session.app, name="session")


if __name__ == "__main__":
    app()
