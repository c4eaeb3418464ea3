"""A local sandbox that runs one command on the caller's terminal, not the desktop guest.

Used by coding-agent sessions (``--isolation sandbox``): the session's supervisor owns a
pseudo-terminal on the host and runs the box's supervisor in it in the foreground
(``supervisor_argv``). That supervisor sets up the same box as for a desktop sandbox
(namespaces, seccomp, its own host uid, cgroup limits, slirp4netns behind the host filter
for ``nat``) but bwrap gets the terminal as stdin/stdout/stderr and runs the command
instead of ``hivecell.guest.boot``: no Xvfb, no guest socket. The box is an ordinary
sandbox folder under ``home/sandboxes``, so ``destroy`` removes it like any other.

Differences from a desktop box's bwrap line, both for the terminal's sake:
- no ``--new-session``: the command needs the terminal as its controlling one (job
  control, Ctrl-C). The terminal is the session's own and only the box reads from it, so a
  TIOCSTI there only types into the box itself;
- the command runs through ``FOREGROUND``, which puts it in a process group of its own and
  makes that the terminal's foreground group, so Ctrl-C reaches the agent, not bwrap or the
  supervisor (which would take the box down). Whoever starts the supervisor ignores SIGINT,
  SIGQUIT and SIGTSTP (so does the supervisor then, and bwrap); ``FOREGROUND`` restores
  them for the command.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from hivecell.errors import ConfigError
from hivecell.sandbox import natplan, transfer
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local import provider as local
from hivecell.sandbox.local.layout import SUPERVISOR_MODULE, Layout
from hivecell.sandbox.local.limits import LimitPlan
from hivecell.sandbox.local.provider import LocalProvider

TERMINAL_FLAG = "--terminal"
# Runs in the box on the host's Python (-I -S: nothing from the environment or site).
FOREGROUND = """
import os, signal, sys
for key in sys.argv[1].split(","):
    os.environ.pop(key, None)
for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
    signal.signal(sig, signal.SIG_DFL)  # ignored by everyone between the PTY and here
try:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(0, os.getpgrp())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
except OSError:
    pass
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"hivecell: cannot start {sys.argv[2]} in the sandbox: {exc.strerror}\\r\\n")
sys.exit(127)
"""
# What the desktop guest needs and a terminal command must not inherit.
GUEST_ONLY_ENV = (
    "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "LD_LIBRARY_PATH",
    "DISPLAY", "XDG_RUNTIME_DIR", "HIVECELL_SANDBOX", "GLIBC_TUNABLES",
)  # fmt: skip


class Bind:
    """One extra host path in the box, at the same path inside."""

    __slots__ = ("host", "writable")

    def __init__(self, host: str, *, writable: bool = False) -> None:
        self.host = host
        self.writable = writable

    def args(self) -> list[str]:
        return ["--bind" if self.writable else "--ro-bind", self.host, self.host]


def prepare(
    provider: LocalProvider,
    spec: SandboxSpec,
    command: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    binds: list[Bind],
) -> str:
    """Make the sandbox's folder and its run plan; returns its id. Sync (call in a thread).
    Nothing runs yet: ``supervisor_argv`` starts it, once per run of the command."""
    _refuse_impossible(provider, spec)
    layout, meta = provider._prepare(spec)
    try:
        transfer.ensure_folder(layout.shared, "inbox", meta.info.host_uid)
        local._write_seccomp(layout)
        plan = provider._plan(layout, spec)
        plan["bwrap_args"] = _terminal_args(plan["bwrap_args"], binds, cwd, env)
        plan["command"] = _foreground(provider, command, env)
        plan["identity"] = local._identity(layout, meta.info.host_uid)
        plan["terminal"] = True
        layout.plan.write_text(json.dumps(plan))
        meta.limits = LimitPlan.from_json(plan["limits"]).describe()
        local.state.save(layout, meta)
    except BaseException:
        provider._destroy_sync(layout)
        raise
    return layout.sandbox_id


def supervisor_argv(home: Path, sandbox_id: str) -> list[str]:
    """The command a terminal's owner runs (in the foreground) for one run of the box."""
    root = Layout.of(home, sandbox_id).root.absolute()
    return [sys.executable, "-I", "-m", SUPERVISOR_MODULE, str(root), TERMINAL_FLAG]


def _refuse_impossible(provider: LocalProvider, spec: SandboxSpec) -> None:
    """As for a desktop box, less Xvfb (nothing draws here)."""
    needed = ["bwrap"] + (["slirp4netns"] if spec.network == "nat" else [])
    missing = [name for name in needed if shutil.which(name) is None]
    if missing:
        packages = " ".join(local.HOST_TOOLS[name] for name in missing)
        raise ConfigError(
            f"sandbox isolation needs {', '.join(missing)}: install with apt install {packages}",
            op="create",
        )
    natplan.require_host_filter(spec.network)
    local._require_seccomp()
    provider._limits(spec, "probe")
    local._require_userns()


def _terminal_args(args: list[str], binds: list[Bind], cwd: str, env: dict[str, str]) -> list[str]:
    out = [a for a in args if a != "--new-session"]
    # The extra binds go before the final --remount-ro of / (their mount points are made
    # on the root tmpfs), in the given order: a later bind may cover part of an earlier one.
    at = out.index("--remount-ro")
    extra = [arg for bind in binds for arg in bind.args()]
    out[at:at] = extra
    out[out.index("--chdir") + 1] = cwd  # one --chdir: bwrap warns on the terminal of two
    for key, value in env.items():
        out += ["--setenv", key, value]
    return out


def _foreground(provider: LocalProvider, command: list[str], env: dict[str, str]) -> list[str]:
    drop = ",".join(k for k in GUEST_ONLY_ENV if k not in env)
    return [provider.runtime.executable, "-I", "-S", "-c", FOREGROUND, drop, *command]
