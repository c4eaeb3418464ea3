"""Reading and rewriting ``$HIVECELL_HOME/config.toml`` without losing people's comments.

Synchronous file I/O: async callers go through ``anyio.to_thread.run_sync``. Writes replace
the file atomically and keep it private (0600): it may hold API keys.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from hivecell.errors import ConfigError


def read(path: Path) -> TOMLDocument:
    try:
        return tomlkit.parse(path.read_text())
    except FileNotFoundError:
        return tomlkit.document()
    except (OSError, TOMLKitError) as exc:
        raise ConfigError(
            f"cannot read {path}: {exc}", op="config", context={"path": str(path)}
        ) from exc


def table(document: TOMLDocument | Table, name: str) -> Table:
    """The table ``name`` of ``document``, created when missing."""
    if name not in document:
        document[name] = tomlkit.table()
    found = document[name]
    if not isinstance(found, Table):
        raise ConfigError(f"{name} in config.toml must be a table", op="config")
    return found


def edit(path: Path, change: Callable[[TOMLDocument], Any]) -> None:
    document = read(path)
    change(document)
    write(path, document)


def write(path: Path, document: TOMLDocument) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(tomlkit.dumps(document))
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
