"""What the server hands a session's supervisor (``spec.json``) and what the supervisor
reports back: both files live in the session's folder, ``$HIVECELL_HOME/sessions/NAME/``."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hivecell.sessions.plugins import Hooks, Isolation, Screen

SPEC_FILE = "spec.json"
SOCKET = "sock"
SCROLLBACK = "scrollback.log"
SUPERVISOR_LOG = "supervisor.log"
WORKTREE = "worktree"


class SessionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    agent: str
    argv: list[str] = Field(min_length=1)
    cwd: str
    env: dict[str, str]
    cols: int = Field(120, ge=1, le=1000)
    rows: int = Field(40, ge=1, le=1000)
    isolation: Isolation
    repo: str
    branch: str | None = None
    sandbox: str | None = None  # sandbox isolation: the local sandbox the agent runs in
    hooks: Hooks = Field(default_factory=Hooks)
    screen: Screen = Field(default_factory=Screen)
    created_at: datetime
    base: str | None = None  # the commit a worktree session's branch started from
    # config.toml [sessions]; defaults for sessions made before the settings existed
    scrollback_max_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)
    audit_max_bytes: int = Field(8 * 1024 * 1024, ge=4096)
    # The model proxy (sessions/proxy): the agent reaches its model through the server.
    proxy: bool = False
    provider: str | None = None  # a [providers.NAME] table; None: the server's default
    max_cost_usd: float | None = Field(None, gt=0)
    auto_answer: bool = False  # type the screen's routine confirmations (plugins.AutoAnswer)


class SupervisorStatus(BaseModel):
    """A supervisor's answer to ``{"op": "status"}``."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["status"] = "status"
    supervisor_pid: int
    pid: int | None
    status: Literal["working", "waiting", "idle", "exited"]
    exit_code: int | None = None
    restarts: int = 0
    cols: int
    rows: int
    scrollback_bytes: int


def write_private(path: Path, text: str) -> None:
    """Written whole (a temporary file renamed over it), owner-only, never through a link."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def read_spec(folder: Path) -> SessionSpec:
    fd = os.open(folder / SPEC_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd) as f:
        return SessionSpec.model_validate(json.load(f))
