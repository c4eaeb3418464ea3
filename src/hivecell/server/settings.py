"""What the server runs with: start-up options (``ServerConfig``) and the preferences people
change from the dashboard (``Preferences``, kept in config.toml ``[server]`` and ``[defaults]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hivecell.agent import approval
from hivecell.agent.llm.pricing import ModelPrice
from hivecell.agent.tools import TOOLS
from hivecell.errors import ConfigError, InvalidParams
from hivecell.keystore import KeyStore
from hivecell.pool.capacity import CapacitySettings
from hivecell.pool.warm import PoolSettings
from hivecell.sandbox.base import Desktop, NetworkMode
from hivecell.sandbox.transfer import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, TransferLimits
from hivecell.server import configfile


@dataclass(frozen=True)
class ServerConfig:
    """Resolved at the edge (``hivecell up``); the server never reads the environment itself."""

    home: Path
    database_url: str
    environ: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None  # None: auth off (only allowed on loopback, checked by the CLI)
    max_concurrent: int | None = None  # overrides the saved preference for this run
    pool_size: int | None = None  # likewise the warm pool's size (0: no warm sandboxes)
    sandbox_provider: str = "local"
    ui: bool = True  # run the installers (dashboard); off: the API alone
    bind_host: str = "127.0.0.1"  # the address it listens on: always an allowed Host
    allowed_hosts: frozenset[str] = frozenset()  # --allowed-host: names a reverse proxy uses
    max_upload_bytes: int = 200 * 1024 * 1024  # files of one POST /tasks, counted as they stream
    max_json_bytes: int = 1024 * 1024
    key_store: KeyStore = field(default_factory=KeyStore.config_only)
    # Caps on each copy into a task's inbox and out of its outbox (hivecell up --transfer-max-*).
    transfer_max_bytes: int = DEFAULT_MAX_BYTES
    transfer_max_files: int = DEFAULT_MAX_FILES
    stats_interval: float = 2.0  # seconds between two samples of every sandbox's usage

    @property
    def transfer_limits(self) -> TransferLimits:
        return TransferLimits(max_bytes=self.transfer_max_bytes, max_files=self.transfer_max_files)

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"


class SandboxDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(1280, ge=320, le=7680)
    height: int = Field(800, ge=200, le=4320)
    network: NetworkMode = "offline"
    desktop: Desktop = Field(
        "full", description="full: panel, file manager, wallpaper; minimal: openbox on black"
    )
    # Ceilings each sandbox may use, not reservations (capacity counts what boxes really use).
    memory_mb: int | None = Field(4096, ge=64, description="memory ceiling; null: none")
    cpus: float | None = Field(2.0, gt=0, le=1024, description="CPU ceiling; null: none")
    disk_mb: int | None = Field(4096, ge=32, description="home + /shared cap; null: none")


class TaskDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(1800.0, gt=0)
    max_steps: int = Field(100, ge=1)
    limits_final: bool = Field(
        False,
        description="reaching timeout, max_steps or a budget ends the task; by default it "
        "pauses the task, resumable with more",
    )
    max_cost_usd: float | None = Field(
        None, gt=0, description="cost budget of tasks that set none (needs the model's price)"
    )
    max_tokens: int | None = Field(None, ge=1, description="token budget of tasks that set none")


# --- approval policy defaults (docs/tools.md "Approval policy") ----------------------------
class ApprovalDefaults(BaseModel):
    """Which calls wait for a person, for tasks that do not say (``approve_tools``)."""

    model_config = ConfigDict(extra="forbid")

    tools: list[str] = Field(
        default_factory=lambda: list(approval.DEFAULT_TOOLS),
        description="write_file asks only onto an existing file, run_shell only for the "
        "shell_rules below",
    )
    shell_rules: list[str] = Field(
        default_factory=lambda: list(approval.DEFAULT_SHELL_RULES),
        description=f"run_shell rules that ask: {', '.join(approval.SHELL_RULES)}",
    )
    timeout_s: float | None = Field(
        None, gt=0, le=7 * 24 * 3600, description="deny an unanswered approval after this long"
    )

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, names: list[str]) -> list[str]:
        return _known("tools", names, TOOLS)

    @field_validator("shell_rules")
    @classmethod
    def _known_rules(cls, names: list[str]) -> list[str]:
        return _known("shell_rules", names, approval.SHELL_RULES)


def _known(setting: str, names: list[str], known: Iterable[str]) -> list[str]:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(
            f"approval.{setting}: unknown name(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return list(dict.fromkeys(names))


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(2, ge=1, le=64)
    output_dir: str | None = Field(None, description="outputs go to OUTPUT_DIR/<task-id>")
    sandbox: SandboxDefaults = Field(default_factory=SandboxDefaults)
    task: TaskDefaults = Field(default_factory=TaskDefaults)
    approval: ApprovalDefaults = Field(default_factory=ApprovalDefaults)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description='USD per 1M tokens by model (config.toml [prices."MODEL"]); added to '
        "the built-in list prices, which they override",
    )

    @field_validator("prices")
    @classmethod
    def _model_names(cls, prices: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        for name in prices:
            if not name.strip() or len(name) > 200 or any(ord(c) < 32 for c in name):
                raise ValueError(f"prices: {name!r} is not a model name (1-200 characters)")
        return prices


# Host trees outputs never go into: a task's files there could be read as configuration or code.
SYSTEM_TREES = tuple(
    Path(p)
    for p in ("/etc", "/proc", "/sys", "/dev", "/boot", "/usr", "/bin", "/sbin", "/lib",
              "/lib32", "/lib64", "/libx32", "/run", "/var/run", "/var/lib")
)  # fmt: skip


def check_output_dir(value: str, home: Path) -> None:
    """Raise ``InvalidParams`` (naming the rule) unless ``value`` is a safe place for outputs:
    absolute, no symlink on the way, outside system trees and the sandboxes' folders, and a
    folder that exists or can be made. Synchronous (touches the file system)."""
    path = Path(value)
    if not path.is_absolute():
        _bad_output_dir(value, "must be an absolute path")
    normal = Path(os.path.normpath(path))
    if normal != path or Path(os.path.realpath(path)) != normal:
        _bad_output_dir(value, "must not be or pass through a symlink (or '..')")
    if normal == Path("/"):
        _bad_output_dir(value, "must not be /")
    boxes = (home / "sandboxes", Path(os.path.realpath(home)) / "sandboxes")
    for tree in (*SYSTEM_TREES, *boxes):
        if normal.is_relative_to(tree):
            _bad_output_dir(value, f"must not be inside {tree}")
    try:
        normal.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        _bad_output_dir(value, f"must be a folder hivecell can create: {exc.strerror}")


def _bad_output_dir(value: str, rule: str) -> None:
    raise InvalidParams(
        f"output_dir {value!r} {rule}", op="settings", context={"field": "output_dir"}
    )


def load_preferences(path: Path) -> Preferences:
    """Read ``[server]`` and ``[defaults]``; synchronous (call from a thread in async code)."""
    document = configfile.read(path)
    server = dict(document.get("server", {}))
    defaults = dict(document.get("defaults", {}))
    kept = ("max_concurrent", "output_dir", "pool", "capacity")
    values = {k: server[k] for k in kept if k in server}
    values |= {k: defaults[k] for k in ("sandbox", "task", "approval") if k in defaults}
    if isinstance(values.get("sandbox"), dict):
        values["sandbox"] = _read_ceilings(values["sandbox"])
    if "prices" in document:
        values["prices"] = dict(document["prices"])
    try:
        return Preferences.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid [server]/[defaults] in {path}: {exc}", op="settings") from exc


# TOML has no null: an unlimited ceiling is written as 0 (below every allowed value).
_CEILINGS = ("memory_mb", "cpus", "disk_mb")


def _toml_ceilings(sandbox: dict[str, Any]) -> dict[str, Any]:
    return {k: (0 if v is None and k in _CEILINGS else v) for k, v in sandbox.items()}


def _read_ceilings(sandbox: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if k in _CEILINGS and v == 0 else v) for k, v in sandbox.items()}


def save_preferences(path: Path, prefs: Preferences) -> None:
    def change(document: Any) -> None:
        server = configfile.table(document, "server")
        server["max_concurrent"] = prefs.max_concurrent
        if prefs.output_dir:
            server["output_dir"] = prefs.output_dir
        else:
            server.pop("output_dir", None)
        server["pool"] = prefs.pool.model_dump()
        server["capacity"] = prefs.capacity.model_dump(exclude_none=True)
        defaults = configfile.table(document, "defaults")
        defaults["sandbox"] = _toml_ceilings(prefs.sandbox.model_dump())
        defaults["approval"] = prefs.approval.model_dump(exclude_none=True)
        defaults["task"] = prefs.task.model_dump(exclude_none=True)
        if prefs.prices:
            document["prices"] = {
                name: price.model_dump(exclude_none=True) for name, price in prefs.prices.items()
            }
        else:
            document.pop("prices", None)

    configfile.edit(path, change)


def merged(current: Preferences, changes: dict[str, Any]) -> Preferences:
    """``current`` with ``changes`` applied one level deep (PUT may send only what changed).
    In ``prices`` a model set to null is removed."""
    values = current.model_dump()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = values[key] | value
        else:
            values[key] = value
    if isinstance(values.get("prices"), dict):
        values["prices"] = {k: v for k, v in values["prices"].items() if v is not None}
    return Preferences.model_validate(values)
