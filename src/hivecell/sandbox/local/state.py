"""What the local provider remembers about each sandbox, and whether it is running now.

The folders under ``<home>/sandboxes`` are the only state: no daemon, no database. A
sandbox is running while its supervisor process is alive; the pid alone is not trusted
(pids get reused), the process's command line must name the supervisor and this folder.
Sync code: the provider calls it from worker threads.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from hivecell.sandbox import supervised
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.local.layout import SUPERVISOR_MODULE, Layout

_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class SandboxMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")

    info: SandboxInfo
    supervisor_pid: int | None = None
    limits: str = ""  # mechanism per resource, e.g. "memory=cgroup1 pids=cgroup1"


def new_id() -> str:
    return "sb-" + secrets.token_hex(4)


def is_valid_id(sandbox_id: str) -> bool:
    """Ids come from users (CLI, API): refuse anything that could leave the folder."""
    return bool(_VALID_ID.match(sandbox_id))


def load(layout: Layout) -> SandboxMeta | None:
    try:
        return SandboxMeta.model_validate_json(layout.meta.read_bytes())
    except (OSError, ValidationError):
        return None


def save(layout: Layout, meta: SandboxMeta) -> None:
    tmp = layout.meta.with_suffix(".tmp")
    tmp.write_text(meta.model_dump_json(indent=2))
    tmp.replace(layout.meta)


def sandbox_ids(home: Path) -> list[str]:
    try:
        return sorted(p.name for p in (home / "sandboxes").iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def supervisor_alive(layout: Layout, pid: int | None) -> bool:
    return supervised.alive(SUPERVISOR_MODULE, layout.root, pid)


def read_exit(layout: Layout) -> dict[str, object]:
    return supervised.read_exit(layout.exit)


def current(layout: Layout, meta: SandboxMeta) -> SandboxInfo:
    """The stored info with today's status and a detail line."""
    limits = f"limits: {meta.limits}" if meta.limits else ""
    if supervisor_alive(layout, meta.supervisor_pid):
        return meta.info.model_copy(update={"status": "running", "detail": limits})
    last = read_exit(layout)
    status = "error" if last.get("status") == "error" else "stopped"
    detail = "; ".join(str(x) for x in (last.get("detail"), limits) if x)
    return meta.info.model_copy(update={"status": status, "detail": detail})


def find_supervisor(layout: Layout) -> int | None:
    """The supervisor of a sandbox whose meta.json is gone (a crash while creating)."""
    return supervised.find(SUPERVISOR_MODULE, layout.root)
