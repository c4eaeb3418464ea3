"""What the server runs with: start-up options (``ServerConfig``) and the preferences people
change from the dashboard (``Preferences``, kept in config.toml ``[server]`` and ``[defaults]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.errors import ConfigError
from hivecell.keystore import KeyStore
from hivecell.sandbox.base import NetworkMode
from hivecell.server import configfile


@dataclass(frozen=True)
class ServerConfig:
    """Resolved at the edge (``hivecell up``); the server never reads the environment itself."""

    home: Path
    database_url: str
    environ: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None  # None: auth off (only allowed on loopback, checked by the CLI)
    max_concurrent: int | None = None  # overrides the saved preference for this run
    sandbox_provider: str = "local"
    ui: bool = True  # run the installers (dashboard); off: the API alone
    bind_host: str = "127.0.0.1"  # the address it listens on: always an allowed Host
    allowed_hosts: frozenset[str] = frozenset()  # --allowed-host: names a reverse proxy uses
    max_upload_bytes: int = 200 * 1024 * 1024  # files of one POST /tasks, counted as they stream
    max_json_bytes: int = 1024 * 1024
    key_store: KeyStore = field(default_factory=KeyStore.config_only)

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"


class SandboxDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(1280, ge=320, le=7680)
    height: int = Field(800, ge=200, le=4320)
    network: NetworkMode = "offline"
    memory_mb: int | None = Field(4096, ge=64)


class TaskDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(1800.0, gt=0)
    max_steps: int = Field(100, ge=1)


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(2, ge=1, le=64)
    output_dir: str | None = Field(None, description="outputs go to OUTPUT_DIR/<task-id>")
    sandbox: SandboxDefaults = Field(default_factory=SandboxDefaults)
    task: TaskDefaults = Field(default_factory=TaskDefaults)


def load_preferences(path: Path) -> Preferences:
    """Read ``[server]`` and ``[defaults]``; synchronous (call from a thread in async code)."""
    document = configfile.read(path)
    server = dict(document.get("server", {}))
    defaults = dict(document.get("defaults", {}))
    values = {k: server[k] for k in ("max_concurrent", "output_dir") if k in server}
    values |= {k: defaults[k] for k in ("sandbox", "task") if k in defaults}
    try:
        return Preferences.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid [server]/[defaults] in {path}: {exc}", op="settings") from exc


def save_preferences(path: Path, prefs: Preferences) -> None:
    def change(document: Any) -> None:
        server = configfile.table(document, "server")
        server["max_concurrent"] = prefs.max_concurrent
        if prefs.output_dir:
            server["output_dir"] = prefs.output_dir
        else:
            server.pop("output_dir", None)
        defaults = configfile.table(document, "defaults")
        defaults["sandbox"] = prefs.sandbox.model_dump(exclude_none=True)
        defaults["task"] = prefs.task.model_dump()

    configfile.edit(path, change)


def merged(current: Preferences, changes: dict[str, Any]) -> Preferences:
    """``current`` with ``changes`` applied one level deep (PUT may send only what changed)."""
    values = current.model_dump()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = values[key] | value
        else:
            values[key] = value
    return Preferences.model_validate(values)
