"""The guest's own limits on what its host may ask: an optional policy file read at boot.

In the spirit of qemu-ga's allow/block lists: whoever builds the image (a VM template:
``hivecell template build --agent-policy FILE`` puts it at ``/etc/hivecell/agent.toml``)
decides which methods the agent serves, which programs it starts, how large a file it
reads or writes and how long a command may run, whatever the host asks. A TOML file:

    allow_methods = ["ping", "screenshot", "mouse_click", "keyboard_type"]  # only these
    block_methods = ["run_shell"]           # never these
    allow_commands = ["python3", "ls"]      # exec_command / open_app programs (basenames)
    block_commands = ["rm", "sh", "bash"]   # run_shell counts as "sh"
    max_file_bytes = 1048576                # lowers the agent's --max-file-bytes
    max_exec_seconds = 120                  # longer timeouts are cut to this

A program an allowed one starts (a shell's children) is beyond any list: block the shells
(and run_shell) to mean it. A malformed file stops the agent from starting (fail closed),
with an error that names the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hivecell.errors import ConfigError, Denied
from hivecell.protocol.methods import METHODS

# Without these no host can even tell what the agent serves: never blocked.
ESSENTIAL = frozenset({"ping", "get_agent_info", "authenticate", "cancel"})
SHELL = "sh"  # what run_shell runs, for the command lists


class AgentPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_methods: list[str] | None = Field(None, description="only these (and the essential)")
    block_methods: list[str] = Field(default_factory=list)
    allow_commands: list[str] | None = Field(None, description="program basenames it may start")
    block_commands: list[str] = Field(default_factory=list)
    max_file_bytes: int | None = Field(None, ge=0)
    max_exec_seconds: float | None = Field(None, gt=0)

    @field_validator("allow_methods", "block_methods")
    @classmethod
    def _known_methods(cls, names: list[str] | None) -> list[str] | None:
        unknown = sorted(set(names or ()) - set(METHODS))
        if unknown:
            raise ValueError(f"no such methods: {', '.join(unknown)} (docs/protocol.md)")
        return names

    @field_validator("block_methods")
    @classmethod
    def _essential_stay(cls, names: list[str]) -> list[str]:
        if ESSENTIAL & set(names):
            raise ValueError(f"{', '.join(sorted(ESSENTIAL & set(names)))} cannot be blocked")
        return names

    def serves(self, method: str) -> bool:
        if method in ESSENTIAL:
            return True
        if self.allow_methods is not None and method not in self.allow_methods:
            return False
        return method not in self.block_methods

    def check(self, method: str, params: Any) -> Any:
        """``params`` as the request may run (a timeout cut to the limit), or ``Denied``."""
        if not self.serves(method):
            raise Denied(
                f"the guest's policy does not serve {method!r}",
                op=method,
                context={"method": method},
            )
        program = _program(method, params)
        if program is not None:
            self._check_program(method, program)
        timeout = getattr(params, "timeout", None)
        limit = self.max_exec_seconds
        if method in ("exec_command", "run_shell") and limit and timeout and timeout > limit:
            params = params.model_copy(update={"timeout": limit})
        return params

    def _check_program(self, method: str, program: str) -> None:
        allowed = self.allow_commands is None or program in self.allow_commands
        if not allowed or program in self.block_commands:
            raise Denied(
                f"the guest's policy does not let {method} start {program!r}",
                op=method,
                context={"program": program},
            )


def _program(method: str, params: Any) -> str | None:
    if method == "exec_command":
        return Path(params.argv[0]).name
    if method == "run_shell":
        return SHELL
    if method == "open_app":
        words = params.name.split()
        return Path(words[0]).name if words else ""
    return None


def load(path: Path) -> AgentPolicy:
    try:
        raw = tomllib.loads(path.read_text())
        return AgentPolicy.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read the agent policy {path}: {exc}", op="policy") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent policy {path} is not TOML: {exc}", op="policy") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"agent policy {path}: {problems}", op="policy") from None


def from_file(path: Path | None, max_file_bytes: int) -> tuple[AgentPolicy | None, int]:
    """The policy named on the command line (if any) and the file size limit under it."""
    if path is None:
        return None, max_file_bytes
    policy = load(path)
    if policy.max_file_bytes is not None:
        max_file_bytes = min(max_file_bytes, policy.max_file_bytes)
    return policy, max_file_bytes
