"""Helpers every CLI command shares: resolving settings and reporting errors."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.markup import escape

from hivecell.config import resolve_home
from hivecell.errors import HivecellError
from hivecell.sandbox.base import SandboxProvider
from hivecell.sandbox.registry import get_provider

T = TypeVar("T")
err = Console(stderr=True)
out = Console()

HomeOption = typer.Option(None, "--home", help="state folder (default $HIVECELL_HOME)")


def provider(name: str = "local", home: Path | None = None) -> SandboxProvider:
    return get_provider(name, resolve_home(home))


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
