"""``hivecell session ...``: coding-agent sessions, through the running server.

The server is found through ``$HIVECELL_HOME/server.json`` (written by ``hivecell up``) or
``--server URL``; the token is ``$HIVECELL_HOME/token``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Table

from hivecell.cli import serverfile
from hivecell.cli.common import HomeOption, err, out
from hivecell.config import resolve_home

if TYPE_CHECKING:
    import httpx2

app = typer.Typer(
    help="Coding-agent sessions (needs a running `hivecell up`).", no_args_is_help=True
)
ServerOpt = Annotated[
    str | None, typer.Option("--server", help="server URL (default: the one `hivecell up` runs)")
]
DETACH = b"\x1d"  # Ctrl-]


class Server:
    def __init__(self, home: Path | None, server: str | None) -> None:
        import httpx2

        root = resolve_home(home)
        url = server or serverfile.read(root)
        if url is None:
            _fail(
                f"no hivecell server is running for {root}: start one with `hivecell up` "
                "(or pass --server URL)"
            )
        self.url = url.rstrip("/")
        token_file = root / "token"
        self.token = token_file.read_text().strip() if token_file.is_file() else None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.client = httpx2.Client(base_url=self.url + "/api/v1", headers=headers, timeout=60)
        self.home = root

    def call(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        import httpx2

        try:
            response = self.client.request(method, path, **kwargs)
        except httpx2.ConnectError:
            _fail(
                f"no hivecell server answers at {self.url}: start one with `hivecell up` "
                "(or pass --server URL)"
            )
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message = f"[{error['code']}] {error['message']}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}: {response.text[:200]}"
            _fail(message)
        return response

    def ws_url(self, name: str, query: str) -> str:
        return self.url.replace("http", "ws", 1) + f"/api/v1/sessions/{name}/attach?{query}"

    def ws_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _fail(message: str) -> NoReturn:
    err.print(f"error {message}", highlight=False, markup=False)
    raise typer.Exit(2)


@app.command("create")
def create(
    name: str,
    repo: Annotated[Path, typer.Option("--repo", help="the repository the agent works on")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="agent id (hivecell agents ls)")
    ] = None,
    isolation: Annotated[
        str | None, typer.Option(help="worktree | none | sandbox (default: the agent's)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="model for agents that need one")] = None,
    network: Annotated[
        str | None, typer.Option(help="sandbox isolation: offline | nat (default: the agent's)")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="start every agent of $HIVECELL_HOME/presets/P.toml as NAME-member"),
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option(help="the model proxy's [providers.NAME] table (default: the server's)"),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option("--max-cost", help="USD the agent may spend through the model proxy"),
    ] = None,
    auto_answer: Annotated[
        bool,
        typer.Option(
            "--auto-answer",
            help="accept the agent's routine confirmations (e.g. [y/n]); each is audited",
        ),
    ] = False,
    server: ServerOpt = None,
    home: Path | None = HomeOption,
) -> None:
    """Start an agent in a new session (or a preset's agents in one session each).

    The agent reaches its model through the server's model proxy: the provider's key never
    enters the session; tokens and cost are counted per session (hivecell session ls)."""
    import shutil

    if (agent is None) == (preset is None):
        _fail("pass --agent ID or --preset P (one of them)")
    srv = Server(home, server)
    cols, rows = shutil.get_terminal_size((120, 40))
    base = {"repo": str(repo.resolve()), "cols": cols, "rows": rows}
    base |= _given({"provider": provider, "max_cost_usd": max_cost})
    if auto_answer:
        base["auto_answer"] = True
    if agent is not None:
        body = base | {"name": name, "agent": agent, "isolation": isolation, "model": model}
        body["network"] = network
        _report(srv.call("POST", "/sessions", json=_given(body)).json())
        return
    _create_preset(srv, name, str(preset), base, isolation, model)


def _given(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _report(view: dict[str, Any]) -> None:
    where = f" on branch {view['branch']}" if view["branch"] else ""
    out.print(
        f"session {view['name']} started: {view['agent']}{where} in {view['cwd']}",
        highlight=False,
    )


def _create_preset(
    srv: Server,
    name: str,
    preset: str,
    base: dict[str, Any],
    isolation: str | None,
    model: str | None,
) -> None:
    from hivecell.errors import HivecellError
    from hivecell.sessions.presets import load_preset

    try:
        members = load_preset(srv.home / "presets", preset).agents
    except HivecellError as exc:
        _fail(f"[{exc.code}] {exc.message}")
    for m in members:
        body = base | {"name": f"{name}-{m.name}", "agent": m.agent}
        body |= {"isolation": m.isolation or isolation, "model": m.model or model}
        view = srv.call("POST", "/sessions", json=_given(body)).json()
        _report(view)
        if m.instructions:
            _wait_ready(srv, view["name"])
            srv.call("POST", f"/sessions/{view['name']}/send", json={"text": m.instructions})


def _wait_ready(srv: Server, name: str, timeout: float = 30) -> None:
    """Until the agent has drawn its prompt and gone quiet, so the instructions are not
    typed into a program still starting up (which may flush its input)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.call("GET", f"/sessions/{name}").json()["status"] in ("idle", "waiting", "exited"):
            return
        time.sleep(0.2)


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: ServerOpt = None,
    home: Path | None = HomeOption,
) -> None:
    """List sessions and whether each agent works, waits for you, idles or exited."""
    items = Server(home, server).call("GET", "/sessions").json()["items"]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table("name", "agent", "status", "isolation", "branch", "pid", "model calls")
    for s in items:
        table.add_row(
            s["name"],
            s["agent"],
            s["status"],
            s["isolation"],
            s["branch"] or "",
            str(s["pid"] or ""),
            _spent(s.get("usage")),
        )
    out.print(table)


def _spent(usage: dict[str, Any] | None) -> str:
    if not usage:
        return ""
    text = f"{usage['requests']} (${usage['cost_usd']:.4f}"
    if usage.get("max_cost_usd") is not None:
        text += f" of ${usage['max_cost_usd']:g}"
    return text + ")" + (f", {usage['refused']} refused" if usage["refused"] else "")


@app.command("send")
def send(
    name: str,
    text: str,
    no_enter: Annotated[bool, typer.Option("--no-enter", help="do not press Enter after")] = False,
    server: ServerOpt = None,
    home: Path | None = HomeOption,
) -> None:
    """Type TEXT into the session's terminal (and Enter)."""
    Server(home, server).call(
        "POST", f"/sessions/{name}/send", json={"text": text, "enter": not no_enter}
    )


@app.command("logs")
def logs(
    name: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new output")
    ] = False,
    server: ServerOpt = None,
    home: Path | None = HomeOption,
) -> None:
    """Print the session's scrollback (what its terminal showed)."""
    srv = Server(home, server)
    response = srv.call("GET", f"/sessions/{name}/logs")
    sys.stdout.buffer.write(response.content)
    sys.stdout.buffer.flush()
    if follow:
        from hivecell.cli.terminal import follow as follow_output

        follow_output(
            srv.ws_url(name, f"offset={response.headers['x-next-offset']}"), srv.ws_headers()
        )


@app.command("attach")
def attach(name: str, server: ServerOpt = None, home: Path | None = HomeOption) -> None:
    """Attach this terminal to the session (raw); Ctrl-] detaches. Several may attach."""
    from hivecell.cli.terminal import attach as attach_terminal

    srv = Server(home, server)
    srv.call("GET", f"/sessions/{name}")  # a clear error for an unknown session
    attach_terminal(srv.ws_url(name, "tail=65536"), srv.ws_headers(), DETACH)
    err.print(f"\r\ndetached from {name}", highlight=False, markup=False)


@app.command("restart")
def restart(name: str, server: ServerOpt = None, home: Path | None = HomeOption) -> None:
    """Restart the session's agent (same folder, same branch)."""
    view = Server(home, server).call("POST", f"/sessions/{name}/restart").json()
    out.print(f"session {name} restarted: {view['status']}", highlight=False)


@app.command("destroy")
def destroy(
    name: str,
    force: Annotated[bool, typer.Option("--force", help="drop uncommitted work too")] = False,
    server: ServerOpt = None,
    home: Path | None = HomeOption,
) -> None:
    """Stop the agent and remove the session; a worktree session's branch is kept."""
    result = (
        Server(home, server).call("DELETE", f"/sessions/{name}", params={"force": force}).json()
    )
    out.print(
        f"session {name} destroyed" + (f"; {result['message']}" if result["message"] else ""),
        highlight=False,
    )


@app.command("audit")
def audit(
    name: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new entries")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    server: ServerOpt = None,
    home: Path | None = HomeOption,
) -> None:
    """Print the session's audit log: its life, typed lines, processes, file changes."""
    from hivecell.cli.session_audit import print_audit

    print_audit(Server(home, server), name, follow=follow, as_json=as_json)


@app.command("diff")
def diff(name: str, server: ServerOpt = None, home: Path | None = HomeOption) -> None:
    """The session branch's changes since it started, uncommitted work included."""
    result = Server(home, server).call("GET", f"/sessions/{name}/diff").json()
    sys.stdout.write(result["diff"])
    if not result["diff"]:
        err.print(f"no changes on {result['branch']} since {result['base'][:12]}", markup=False)


@app.command("merge")
def merge(
    name: str,
    into: Annotated[
        str | None, typer.Option("--into", help="target branch (default: the checked-out one)")
    ] = None,
    commit: Annotated[
        bool, typer.Option("--commit", help="commit the worktree's pending changes first")
    ] = False,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="message for that commit")
    ] = None,
    server: ServerOpt = None,
    home: Path | None = HomeOption,
) -> None:
    """Merge the session's branch into a branch of the main repository."""
    body = _given({"into": into, "commit": commit, "message": message})
    result = Server(home, server).call("POST", f"/sessions/{name}/merge", json=body).json()
    out.print(result["message"], highlight=False, markup=False)
