"""Settings resolved at the edge (CLI, SDK constructors): argument > environment > default.

Library code below the edge receives explicit values and never reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def resolve_home(arg: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where state lives: ``arg`` > ``$HIVECELL_HOME`` > ``$XDG_DATA_HOME/hivecell``."""
    env = os.environ if environ is None else environ
    if arg:
        return Path(arg).expanduser()
    if env.get("HIVECELL_HOME"):
        return Path(env["HIVECELL_HOME"]).expanduser()
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "hivecell"
