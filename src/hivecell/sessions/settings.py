"""Settings for sessions from ``$HIVECELL_HOME/config.toml`` ``[sessions]``:

    [sessions]
    scrollback_max_bytes = 33554432   # per session; the newest half is kept past it
    audit_max_bytes = 8388608         # per audit file; 3 rotated files are kept besides it

A session takes them when it is created (they go into its spec.json).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.errors import ConfigError
from hivecell.sessions.audit import DEFAULT_MAX_BYTES as AUDIT_MAX_BYTES
from hivecell.sessions.scrollback import DEFAULT_MAX_BYTES as SCROLLBACK_MAX_BYTES
from hivecell.sessions.scrollback import MIN_MAX_BYTES


class SessionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scrollback_max_bytes: int = Field(SCROLLBACK_MAX_BYTES, ge=MIN_MAX_BYTES)
    audit_max_bytes: int = Field(AUDIT_MAX_BYTES, ge=4096)


def load_settings(home: Path) -> SessionSettings:
    """Synchronous (reads a file): call from a thread in async code."""
    path = home / "config.toml"
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return SessionSettings()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}", op="session_settings") from None
    try:
        return SessionSettings.model_validate(document.get("sessions", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{path} [sessions] {where}: {first['msg']}; fix or remove it",
            op="session_settings",
        ) from None
