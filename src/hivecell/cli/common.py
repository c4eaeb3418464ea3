"""Helpers every CLI command shares: resolving settings and reporting errors."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.markup import escape

from hivecell.config import resolve_home
from hivecell.errors import HivecellError
from hivecell.sandbox import netpolicy
from hivecell.sandbox.base import NetworkMode
from hivecell.sandbox.registry import PROVIDERS
from hivecell.sandbox.router import ProviderRouter

T = TypeVar("T")
err = Console(stderr=True)
out = Console()

HomeOption = typer.Option(None, "--home", help="state folder (default $HIVECELL_HOME)")
# The model options `run` and `crew` share.
ModelOpt = Annotated[str | None, typer.Option(help="model name (default $HIVECELL_MODEL)")]
BaseUrlOpt = Annotated[
    str | None, typer.Option(help="OpenAI-compatible URL (default $OPENAI_BASE_URL)")
]
ApiKeyOpt = Annotated[str | None, typer.Option(help="API key (default $OPENAI_API_KEY)")]
ProviderOpt = Annotated[
    str | None, typer.Option("--provider", help=r"a \[providers.NAME] from config.toml")
]
NETWORK_HELP = "offline | nat (default offline; nat with --allow)"
ALLOW_HELP = (
    "nat: a domain (example.org), *.domain or CIDR (198.51.100.0/24) the sandbox may reach; "
    "repeat for more. Without it a nat sandbox reaches the public internet; private ranges "
    "stay refused unless a CIDR here names them"
)


def network_choice(network: str | None, allow: list[str]) -> tuple[NetworkMode, list[str]]:
    """--network and --allow checked together; --allow alone means nat."""
    if network not in (None, "offline", "nat"):
        raise typer.BadParameter(f"--network {network!r}: use offline or nat")
    try:
        entries = netpolicy.normalize(allow)
    except ValueError as exc:
        raise typer.BadParameter(f"--allow: {exc}") from None
    if entries and network == "offline":
        raise typer.BadParameter("--allow needs --network nat (offline reaches nothing)")
    return ("nat" if network == "nat" or entries else "offline"), entries


def provider(name: str = "local", home: Path | None = None) -> ProviderRouter:
    """``name`` creates; every other call finds the sandbox's own provider by its id."""
    if name not in PROVIDERS:
        choices = ", ".join(sorted(PROVIDERS))
        raise typer.BadParameter(f"unknown sandbox provider {name!r}; use one of {choices}")
    return ProviderRouter(resolve_home(home), name)


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async command body; typed hivecell errors become a one-line message + exit 2."""
    try:
        return anyio.run(fn, *args)
    except HivecellError as exc:
        err.print(f"[red]error[/red] {escape(f'[{exc.code}] {exc}')}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
