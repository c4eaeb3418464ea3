"""Agent plugins: how to start each coding-agent CLI, how to tell it is installed, and what
its screen looks like when it works or waits for the person.

Built-in definitions cover the seed's ids; a user adds ``custom/NAME`` agents as TOML files
``$HIVECELL_HOME/agents/NAME.toml`` with the same fields (``id`` may be left out). Built-ins
start each CLI ready to work unattended against the session's model; ``{model}`` in ``args``
or ``environment`` is the session's model.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hivecell.errors import InvalidParams
from hivecell.protocol.jsonrpc import describe_validation
from hivecell.sessions.proxy.gate import PLACEHOLDER_KEY

Isolation = Literal["sandbox", "worktree", "none"]
BUILTIN_IDS = (
    "claude-code",
    "gemini-cli",
    "openai-codex",
    "aider",
    "gh-copilot",
    "amp-code",
    "opencode",
    "shell",
)
_CUSTOM_STEM = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?", re.ASCII)


# The usual variables of OpenAI- and Anthropic-style clients, pointed at the model proxy. The
# key is a placeholder the proxy replaces: the real one never reaches the agent.
MODEL_ENV: dict[str, str] = {
    "OPENAI_BASE_URL": "{proxy}/v1",
    "OPENAI_API_KEY": PLACEHOLDER_KEY,
    "ANTHROPIC_BASE_URL": "{proxy}",
    "ANTHROPIC_API_KEY": PLACEHOLDER_KEY,
}


class Defaults(BaseModel):
    """What a session of this agent gets unless its creator says otherwise."""

    model_config = ConfigDict(extra="forbid")

    isolation: Isolation = "sandbox"
    memory_mb: int | None = Field(None, ge=64)
    network: Literal["offline", "nat"] = "offline"
    environment: dict[str, str] = Field(default_factory=dict)


class Hooks(BaseModel):
    """Shell commands run in the session's folder: before the agent starts, after it exits."""

    model_config = ConfigDict(extra="forbid")

    on_start: str | None = None
    on_exit: str | None = None


def _check_pattern(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern {pattern!r}: {exc}") from None
    return pattern


class AutoAnswer(BaseModel):
    """A routine confirmation and the keys that accept it, typed for the person when a
    session is made with auto-answer on (claude-squad's "auto-yes")."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(min_length=1, description="matched at the cursor's line and below")
    keys: str = Field(min_length=1, max_length=64, description='typed as is; "\\r" is Enter')

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        return _check_pattern(pattern)


class Screen(BaseModel):
    """Regular expressions matched against the rendered screen (see ``sessions.status``)."""

    model_config = ConfigDict(extra="forbid")

    waiting: list[str] = Field(default_factory=list, description="the agent asks the person")
    working: list[str] = Field(default_factory=list, description="the agent is busy")
    auto_answer: list[AutoAnswer] = Field(
        default_factory=list, description="routine confirmations auto-answer may accept"
    )

    @field_validator("waiting", "working")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return [_check_pattern(p) for p in patterns]


class AgentDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    check_command: list[str] = Field(default_factory=list, description="prints the version")
    install: str = Field("", description="how to install it, shown when it is missing")
    defaults: Defaults = Field(default_factory=Defaults)
    hooks: Hooks = Field(default_factory=Hooks)
    screen: Screen = Field(default_factory=Screen)
    model_env: dict[str, str] = Field(
        default_factory=lambda: dict(MODEL_ENV),
        description="variables pointing the CLI at the model proxy; {proxy} is its URL",
    )

    def argv(self, model: str | None) -> list[str]:
        """The command line, ``{model}`` filled in; ``InvalidParams`` if it needs one."""
        return [self.command, *(self._fill(arg, model) for arg in self.args)]

    def environment(self, model: str | None) -> dict[str, str]:
        return {k: self._fill(v, model) for k, v in self.defaults.environment.items()}

    def _fill(self, text: str, model: str | None) -> str:
        if "{model}" not in text:
            return text
        if not model:
            raise InvalidParams(
                f"agent {self.id} starts with a model: pass --model (the body's 'model')",
                op="session_create",
                context={"agent": self.id},
            )
        return text.replace("{model}", model)


_CONFIRM = [r"\(y/n\)", r"\[y/n\]", r"\[Y/n\]", r"\[y/N\]", r"Do you want to", r"Allow\b.*\?"]
# Yes to a yes/no question whose default is not "no" ([y/N] is left to the person).
_YES = [AutoAnswer(pattern=r"(\(y/n\)|\[y/n\]|\[Y/n\])\s*$", keys="y\r")]
BUILTINS: dict[str, AgentDef] = {
    a.id: a
    for a in (
        AgentDef(
            id="claude-code",
            name="Claude Code",
            command="claude",
            args=["--permission-mode", "acceptEdits"],
            check_command=["claude", "--version"],
            install="npm install -g @anthropic-ai/claude-code",
            screen=Screen(
                waiting=[*_CONFIRM, r"\u276f 1\. Yes"],
                working=[r"esc to interrupt"],
                # its permission menu opens on "1. Yes": Enter takes it
                auto_answer=[*_YES, AutoAnswer(pattern=r"\u276f 1\. Yes", keys="\r")],
            ),
        ),
        AgentDef(
            id="gemini-cli",
            name="Gemini CLI",
            command="gemini",
            args=["--approval-mode", "auto_edit"],
            check_command=["gemini", "--version"],
            install="npm install -g @google/gemini-cli",
            screen=Screen(
                waiting=[*_CONFIRM, r"Apply this change\?"],
                working=[r"esc to cancel"],
                auto_answer=_YES,
            ),
        ),
        AgentDef(
            id="openai-codex",
            name="OpenAI Codex",
            command="codex",
            args=["--full-auto", "--model", "{model}"],
            check_command=["codex", "--version"],
            install="npm install -g @openai/codex",
            screen=Screen(
                waiting=[*_CONFIRM, r"Allow command\?"],
                working=[r"Esc to interrupt"],
                auto_answer=_YES,
            ),
        ),
        AgentDef(
            id="aider",
            name="Aider",
            command="aider",
            args=[
                "--model",
                "openai/{model}",
                "--yes-always",
                "--no-check-update",
                "--no-show-model-warnings",
                "--no-analytics",
            ],
            check_command=["aider", "--version"],
            install="uv tool install aider-chat  (or: pipx install aider-chat)",
            # litellm's names; its price list is the one it ships (a box is offline)
            model_env={
                **MODEL_ENV,
                "OPENAI_API_BASE": "{proxy}/v1",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            },
            screen=Screen(
                waiting=_CONFIRM, working=[r"Waiting for .*", r"Tokens: .* sent"], auto_answer=_YES
            ),
        ),
        AgentDef(
            id="gh-copilot",
            name="GitHub Copilot CLI",
            command="gh",
            args=["copilot"],
            check_command=["gh", "copilot", "--version"],
            install="gh extension install github/gh-copilot",
            screen=Screen(waiting=[*_CONFIRM, r"\? Select an option"], auto_answer=_YES),
        ),
        AgentDef(
            id="amp-code",
            name="Amp",
            command="amp",
            args=["--dangerously-allow-all"],
            check_command=["amp", "--version"],
            install="npm install -g @sourcegraph/amp",
            screen=Screen(waiting=_CONFIRM, working=[r"Esc to cancel"], auto_answer=_YES),
        ),
        AgentDef(
            id="opencode",
            name="OpenCode",
            command="opencode",
            args=["--model", "{model}"],
            check_command=["opencode", "--version"],
            install="npm install -g opencode-ai",
            screen=Screen(waiting=_CONFIRM, working=[r"esc interrupt"], auto_answer=_YES),
        ),
        AgentDef(
            id="shell",
            name="Shell",
            command="bash",
            args=["--noprofile", "--norc", "-i"],
            check_command=["bash", "--version"],
            install="apt-get install bash",
            screen=Screen(waiting=_CONFIRM, auto_answer=_YES),
        ),
    )
}


def load_agents(agents_dir: Path) -> dict[str, AgentDef]:
    """Built-ins, then every ``agents_dir/*.toml`` as ``custom/<stem>``."""
    agents = dict(BUILTINS)
    if agents_dir.is_dir():
        for path in sorted(agents_dir.glob("*.toml")):
            agent = load_custom(path)
            agents[agent.id] = agent
    return agents


def load_custom(path: Path) -> AgentDef:
    stem = path.stem
    if not _CUSTOM_STEM.fullmatch(stem):
        raise _bad(
            path, "name the file with lower-case letters, digits and hyphens (my-agent.toml)"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not valid TOML: {exc}") from None
    expected = f"custom/{stem}"
    data.setdefault("id", expected)
    data.setdefault("name", stem)
    if data["id"] != expected:
        raise _bad(path, f"id must be {expected!r} (the file's name), not {data['id']!r}")
    try:
        return AgentDef.model_validate(data)
    except ValidationError as exc:
        raise _bad(path, describe_validation(exc)) from None


def _bad(path: Path, why: str) -> InvalidParams:
    return InvalidParams(f"agent file {path}: {why}", op="load_agents", context={"file": str(path)})


def get_agent(agents: dict[str, AgentDef], agent_id: str) -> AgentDef:
    try:
        return agents[agent_id]
    except KeyError:
        known = ", ".join(sorted(agents))
        raise InvalidParams(
            f"no agent {agent_id!r}: use one of {known}, or add "
            f"$HIVECELL_HOME/agents/NAME.toml for custom/NAME",
            op="session_create",
            context={"agent": agent_id},
        ) from None
