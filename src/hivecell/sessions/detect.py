"""Is an agent installed, and which version: its ``check_command`` under a timeout."""

from __future__ import annotations

import shutil
import subprocess

from pydantic import BaseModel, ConfigDict

from hivecell.sessions.plugins import AgentDef

CHECK_TIMEOUT = 5.0


class Detection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    installed: bool
    path: str | None = None
    version: str | None = None
    problem: str | None = None


def detect(agent: AgentDef, search_path: str, timeout: float = CHECK_TIMEOUT) -> Detection:
    """Blocking (runs a process): async callers use a worker thread. ``search_path`` is the
    PATH the sessions will run with, handed in by the edge."""
    found = shutil.which(agent.command, path=search_path)
    if found is None:
        return Detection(installed=False, problem=f"{agent.command} not on PATH")
    if not agent.check_command:
        return Detection(installed=True, path=found)
    check = shutil.which(agent.check_command[0], path=search_path) or agent.check_command[0]
    try:
        done = subprocess.run(
            [check, *agent.check_command[1:]],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={"PATH": search_path, "NO_COLOR": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Detection(installed=False, path=found, problem=f"check timed out ({timeout}s)")
    except OSError as exc:
        return Detection(installed=False, path=found, problem=exc.strerror)
    if done.returncode != 0:
        return Detection(installed=False, path=found, problem=f"check exit {done.returncode}")
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    return Detection(
        installed=True, path=found, version=text.splitlines()[0][:120] if text else None
    )
