"""``hivecell up``: serve the API and the dashboard with uvicorn in this process."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hivecell.cli import serverfile
from hivecell.cli.common import HomeOption, err, out, run
from hivecell.config import resolve_home

if TYPE_CHECKING:
    from hivecell.server.settings import ServerConfig

# FastAPI, uvicorn and the task runtime are imported inside the command: `hivecell --help`
# and every other command would pay for them otherwise.


def up(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port)")] = 8484,
    database_url: Annotated[
        str | None,
        typer.Option(help="task database (default $HIVECELL_DATABASE_URL or SQLite in home)"),
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="tasks at once (default: settings, 2)")
    ] = None,
    pool_size: Annotated[
        int | None,
        typer.Option(min=0, max=64, help="warm sandboxes per shape (default: settings, 1; 0: off)"),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="no token (only allowed on a loopback host)")
    ] = False,
    api_only: Annotated[
        bool, typer.Option("--api-only", help="serve the API without the UI")
    ] = False,
    transfer_max_bytes: Annotated[
        int, typer.Option(min=0, help="cap on bytes copied into an inbox / out of an outbox")
    ] = 1024**3,
    transfer_max_files: Annotated[
        int, typer.Option(min=0, help="cap on files copied into an inbox / out of an outbox")
    ] = 10_000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="also accept this Host name (a reverse proxy's); repeatable. The bound "
            "address and localhost are always accepted",
        ),
    ] = None,
    max_upload_mb: Annotated[
        int, typer.Option(min=1, help="cap on the files of one task upload, in MiB")
    ] = 200,
    home: Path | None = HomeOption,
) -> None:
    """Start the server; prints the login link (it carries the token)."""
    from hivecell.homedir import private_umask, secure_home
    from hivecell.keystore import KeyStore
    from hivecell.server.auth import is_loopback_host, load_or_create_token
    from hivecell.server.guard import hosts_of
    from hivecell.server.settings import ServerConfig
    from hivecell.store import default_database_url

    private_umask()  # the database, traces and outputs this server creates are private
    root = resolve_home(home)
    if no_auth and not is_loopback_host(host):
        err.print(
            f"[red]error[/red] --no-auth is only allowed on a loopback host, not {host}: "
            "drop --no-auth (the token in $HIVECELL_HOME/token protects the server) "
            "or use --host 127.0.0.1",
            highlight=False,
        )
        raise typer.Exit(2)
    secure_home(root)
    config = ServerConfig(
        home=root,
        database_url=database_url
        or os.environ.get("HIVECELL_DATABASE_URL")
        or default_database_url(root),
        environ=dict(os.environ),
        token=None if no_auth else load_or_create_token(root),
        max_concurrent=max_concurrent,
        pool_size=pool_size,
        ui=not api_only,
        transfer_max_bytes=transfer_max_bytes,
        transfer_max_files=transfer_max_files,
        bind_host=host,
        allowed_hosts=hosts_of(allowed_host or []),
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        key_store=KeyStore.detect(),
    )
    sock = _bind(host, port)
    run(_serve, config, sock, host)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        err.print(
            f"[red]error[/red] cannot listen on {host}:{port}: {exc.strerror}; "
            "pick another --port (0 = any free one)",
            highlight=False,
        )
        raise typer.Exit(2) from None


async def _serve(config: ServerConfig, sock: socket.socket, host: str) -> None:
    import uvicorn

    from hivecell.server.app import create_app

    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", ws_max_size=1 << 20)
    )
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    link = f"http://{shown}:{port}/" + (f"?token={config.token}" if config.token else "")
    out.print(f"hivecell is up: {link}", highlight=False, soft_wrap=True)
    out.file.flush()  # a supervisor reading a pipe needs the link now, not at exit
    url = serverfile.client_url(host, port)
    serverfile.write(config.home, url)  # how `hivecell session ...` finds this server
    try:
        await server.serve(sockets=[sock])
    finally:
        serverfile.remove(config.home, url)
