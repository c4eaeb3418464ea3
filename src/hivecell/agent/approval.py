"""Which tool calls wait for a person's approval, and why.

The policy is a list of tools plus, for ``run_shell``, a list of named destructive-command
rules. ``write_file`` asks only when it would overwrite an existing file; ``run_shell`` asks
only when a rule matches one of the simple commands in the command line. Command lines are
split the way a shell would (quotes, ``;`` ``&&`` ``||`` ``|`` ``&``, newlines, ``$(...)``,
backticks, ``<(...)``, ``sh -c``, ``eval``, ``sudo``-like wrappers), never searched as text:
``echo "rm -rf /"`` does not ask, ``true && rm -rf /`` does.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

SHELL_RULES: dict[str, str] = {
    "recursive_rm": "rm with -r, -R or --recursive (also combined, e.g. -rf, -Rf)",
    "dd": "dd (raw copies onto devices or files)",
    "mkfs": "mkfs, mkfs.* (makes a file system)",
    "chmod_recursive": "chmod -R / --recursive",
    "chown_recursive": "chown -R / --recursive",
    "download_to_shell": "a download run by a shell: curl|sh, wget -O- | sudo bash, "
    'bash <(curl ...), sh -c "$(curl ...)"',
    "power": "shutdown, reboot, poweroff, halt (also systemctl reboot/poweroff/halt)",
    "kill_all": "kill -9 -1 (kills every process)",
    "any": "every command (off by default)",
}
DEFAULT_SHELL_RULES = tuple(name for name in SHELL_RULES if name != "any")
DEFAULT_TOOLS: tuple[str, ...] = (
    "delete_file",
    "move_file",
    "write_file",
    "edit_file",
    "run_shell",
)
# the seed-002 catalogue's dangerous tools (hivecell.agent.catalog; copy_file: overwrite only)
DEFAULT_TOOLS += ("force_quit_app", "kill_process", "empty_trash", "copy_file")

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "busybox"})
DOWNLOADERS = frozenset({"curl", "wget", "fetch", "aria2c", "http", "https"})
POWER = frozenset({"shutdown", "reboot", "poweroff", "halt"})
# Commands that run their arguments as another command (options skipped as below).
WRAPPERS = frozenset(
    {"sudo", "doas", "env", "nohup", "nice", "ionice", "time", "timeout", "exec", "command",
     "builtin", "xargs", "stdbuf", "setsid", "chroot", "busybox", "unbuffer", "watch"}
)  # fmt: skip
# Options of those wrappers that take a value as the next word.
_WRAPPER_VALUE_OPTS = {
    "sudo": {"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T"},
    "doas": {"-u", "-C"},
    "env": {"-u", "-C", "-S"},
    "nice": {"-n"},
    "ionice": {"-c", "-n", "-p"},
    "timeout": {"-k", "-s"},
    "xargs": {"-I", "-n", "-P", "-L", "-d", "-s", "-E", "-a"},
    "stdbuf": {"-i", "-o", "-e"},
    "watch": {"-n", "-d"},
}
# Reserved words that may start a simple command's words (``if x; then rm -rf y; fi``).
KEYWORDS = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_REDIRECT_ALONE = re.compile(r"^\d*(>>?|<<?<?|>&|<&|&>>?|>\|)$")
_REDIRECT_JOINED = re.compile(r"^\d*(>>?|<|&>>?|>&|<&)\S")
_PLACEHOLDER = "\x00sub{}\x00"
_PLACEHOLDER_RE = re.compile(r"\x00sub(\d+)\x00")


class UnparsableCommand(ValueError):
    pass


@dataclass
class _Parsed:
    """A command line as pipelines of simple commands (argv lists), plus the text of each
    substitution (``$(...)``, backticks, ``<(...)``) by number."""

    pipelines: list[list[list[str]]] = field(default_factory=list)
    substitutions: list[str] = field(default_factory=list)


# --- splitting ---------------------------------------------------------------------------
def _closing_paren(text: str, start: int) -> int:
    """Index of the ``)`` matching the ``(`` before ``start`` (quote-aware)."""
    depth, i, quote = 1, start, ""
    while i < len(text):
        c = text[i]
        if c == "\\" and quote != "'":
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise UnparsableCommand("unbalanced parenthesis")


def _scan(text: str, subs: list[str]) -> list[tuple[str, str]]:
    """Split ``text`` at unquoted separators; returns (segment, separator after it) and puts
    substitutions into ``subs``, leaving a placeholder word in the segment."""
    out: list[tuple[str, str]] = []
    buf: list[str] = []
    quote, i = "", 0
    while i < len(text):
        c, two = text[i], text[i : i + 2]
        if c == "\\" and quote != "'":
            buf.append(text[i : i + 2])
            i += 2
            continue
        if quote != "'" and two in ("$(", "<(", ">("):
            end = _closing_paren(text, i + 2)
            subs.append(text[i + 2 : end])
            buf.append(_PLACEHOLDER.format(len(subs) - 1))
            i = end + 1
            continue
        if quote != "'" and c == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise UnparsableCommand("unbalanced backtick")
            subs.append(text[i + 1 : end])
            buf.append(_PLACEHOLDER.format(len(subs) - 1))
            i = end + 1
            continue
        if quote:
            quote = "" if c == quote else quote
            buf.append(c)
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|()"):
            end = text.find("\n", i)  # a comment runs to the end of the line
            i = len(text) if end < 0 else end
            continue
        elif c in "'\"":
            quote = c
            buf.append(c)
        elif two in ("&&", "||", "|&", ";;"):
            out.append(("".join(buf), "|" if two == "|&" else ";"))
            buf, i = [], i + 2
            continue
        elif c in ";&|\n()":
            if c == "&" and (text[i - 1 : i] in ("<", ">") or text[i + 1 : i + 2] == ">"):
                buf.append(c)  # a redirection like 2>&1 or &> file, not a separator
            else:
                out.append(("".join(buf), "|" if c == "|" else ";"))
                buf = []
        else:
            buf.append(c)
        i += 1
    if quote:
        raise UnparsableCommand("unbalanced quote")
    out.append(("".join(buf), ";"))
    return out


def _words(segment: str) -> list[str]:
    try:
        words = shlex.split(segment, comments=True, posix=True)
    except ValueError as exc:
        raise UnparsableCommand(str(exc)) from exc
    argv: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif _REDIRECT_ALONE.match(word):
            skip = True  # the next word is the redirection's target
        elif not _REDIRECT_JOINED.match(word):
            argv.append(word)
    while argv and _ASSIGNMENT.match(argv[0]):
        argv.pop(0)
    return argv


def parse(command: str) -> _Parsed:
    parsed = _Parsed()
    pipeline: list[list[str]] = []
    for segment, separator in _scan(command, parsed.substitutions):
        argv = _words(segment)
        if argv:
            pipeline.append(argv)
        if separator != "|" and pipeline:
            parsed.pipelines.append(pipeline)
            pipeline = []
    if pipeline:
        parsed.pipelines.append(pipeline)
    return parsed


def _unwrap(argv: list[str]) -> list[str]:
    """The command a wrapper runs (``sudo -u x rm -rf y`` -> ``rm -rf y``)."""
    while argv:
        name = PurePosixPath(argv[0]).name
        if name in KEYWORDS:
            argv = argv[1:]
            continue
        if name not in WRAPPERS:
            return [name, *argv[1:]]
        rest, takes_value = argv[1:], _WRAPPER_VALUE_OPTS.get(name, set())
        while rest and (rest[0].startswith("-") or _ASSIGNMENT.match(rest[0])):
            option = rest.pop(0)
            if option == "--":
                break
            if option in takes_value and rest:
                rest.pop(0)
        if name == "timeout" and rest:
            rest.pop(0)  # the duration
        if name == "chroot" and rest:
            rest.pop(0)  # the new root
        argv = rest
    return argv


# --- rules -------------------------------------------------------------------------------
def _options(args: list[str]) -> list[str]:
    """Option words before ``--`` (after it everything is an operand, e.g. ``rm -- -r``)."""
    out = []
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("-") and arg != "-":
            out.append(arg)
    return out


def _has_flag(args: list[str], letters: str, long: str) -> bool:
    for option in _options(args):
        if option == long:
            return True
        if not option.startswith("--") and any(ch in letters for ch in option[1:]):
            return True
    return False


def _kill_all(args: list[str]) -> bool:
    signal, operands, i = "TERM", [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("-s", "-n") and i + 1 < len(args):
            signal, i = args[i + 1], i + 2
            continue
        if arg == "--":
            operands += args[i + 1 :]
            break
        if arg.startswith("-") and not operands and arg != "-1" and not signal.isdigit():
            signal = arg[1:]
        else:
            operands.append(arg)
        i += 1
    sig = signal.upper().removeprefix("SIG")
    return sig in ("9", "KILL") and "-1" in operands


def _simple_rules(argv: list[str]) -> list[str]:
    name, args = argv[0], argv[1:]
    hits = []
    if name == "rm" and _has_flag(args, "rR", "--recursive"):
        hits.append("recursive_rm")
    if name == "dd":
        hits.append("dd")
    if name.startswith("mkfs"):
        hits.append("mkfs")
    if name == "chmod" and _has_flag(args, "R", "--recursive"):
        hits.append("chmod_recursive")
    if name == "chown" and _has_flag(args, "R", "--recursive"):
        hits.append("chown_recursive")
    if name in POWER or (name == "systemctl" and POWER & set(args)):
        hits.append("power")
    if name == "kill" and _kill_all(args):
        hits.append("kill_all")
    return hits


def _inner_scripts(argv: list[str]) -> list[str]:
    """Scripts a command runs from its arguments: ``sh -c SCRIPT``, ``eval WORDS``,
    ``find ... -exec CMD ;``."""
    name, args = argv[0], argv[1:]
    if name == "eval":
        return [" ".join(args)]
    if name in SHELLS:
        for i, arg in enumerate(args):
            if (
                arg.startswith("-")
                and not arg.startswith("--")
                and "c" in arg
                and i + 1 < len(args)
            ):
                return [args[i + 1]]
    if name == "find":
        scripts: list[str] = []
        current: list[str] | None = None
        for arg in args:
            if arg in ("-exec", "-execdir", "-ok", "-okdir"):
                current = []
            elif current is not None and arg in (";", "+"):
                scripts.append(shlex.join(current))
                current = None
            elif current is not None:
                current.append(arg)
        return scripts
    return []


class _Matcher:
    def __init__(self, command: str, depth: int = 0) -> None:
        if depth > 8:
            raise UnparsableCommand("nested too deeply")
        self.parsed = parse(command)
        self.depth = depth
        self.hits: list[str] = []
        self._downloads: dict[int, bool] = {}

    def run(self) -> list[str]:
        for pipeline in self.parsed.pipelines:
            downloaded = False
            for raw in pipeline:
                argv = _unwrap(raw)
                if not argv:
                    continue
                self._command(argv, after_download=downloaded)
                downloaded = downloaded or argv[0] in DOWNLOADERS
        for text in self.parsed.substitutions:
            self.hits += _Matcher(text, self.depth + 1).run()
        return self.hits

    def _command(self, argv: list[str], *, after_download: bool) -> None:
        self.hits += _simple_rules(argv)
        if argv[0] in SHELLS and (after_download or self._runs_download(argv[1:])):
            self.hits.append("download_to_shell")
        for script in _inner_scripts(argv):
            self.hits += _Matcher(script, self.depth + 1).run()

    def _runs_download(self, args: Iterable[str]) -> bool:
        """A shell given a downloading substitution: ``bash <(curl ..)``, ``sh -c "$(wget ..)"``."""
        for arg in args:
            for number in _PLACEHOLDER_RE.findall(arg):
                inner = parse(self.parsed.substitutions[int(number)])
                if any(_unwrap(a)[:1] and _unwrap(a)[0] in DOWNLOADERS
                       for p in inner.pipelines for a in p):  # fmt: skip
                    return True
        return False


def shell_rules_matched(command: str, enabled: Iterable[str] = DEFAULT_SHELL_RULES) -> list[str]:
    """Names of the enabled rules ``command`` matches, in rule order. A command line that
    cannot be split (unbalanced quotes) matches ``unparsable``: the shell would reject it too,
    but a person should look rather than trust a guess."""
    wanted = set(enabled)
    if "any" in wanted:
        return ["any"]
    try:
        hits = set(_Matcher(command).run())
    except UnparsableCommand:
        return ["unparsable"] if wanted else []
    return [name for name in SHELL_RULES if name in hits and name in wanted]


# --- the policy ----------------------------------------------------------------------------
Exists = Callable[[str], Awaitable[bool]]


async def reason_to_ask(
    tool: str,
    arguments: dict[str, Any],
    *,
    tools: Iterable[str],
    shell_rules: Iterable[str],
    exists: Exists,
) -> str | None:
    """Why this call needs approval, or None to run it without asking. ``exists`` tells
    whether a path exists in the sandbox (used for ``write_file`` only)."""
    if tool not in set(tools):
        return None
    if tool == "run_shell":
        matched = shell_rules_matched(str(arguments.get("command", "")), shell_rules)
        if not matched:
            return None
        return "run_shell matches " + ", ".join(
            f"{name} ({SHELL_RULES.get(name, 'a command line that cannot be parsed')})"
            for name in matched
        )
    if tool == "write_file":
        path = str(arguments.get("path", ""))
        if not await exists(path):
            return None
        return f"write_file would overwrite the existing file {path}"
    if tool == "copy_file":
        if not arguments.get("overwrite"):
            return None  # the guest refuses to replace anything without overwrite=true
        return f"copy_file may overwrite {arguments.get('destination', '')}"
    return f"{tool} is in the approval list"


def safety_reason(checks: Iterable[Any]) -> str:
    """The approval reason for a vendor's pending safety checks (OpenAI's computer tool):
    its own code and message, so the person sees what the vendor flagged."""
    return "the model vendor flagged this action: " + "; ".join(
        ": ".join(str(part) for part in (c.code or "safety_check", c.message) if part)
        for c in checks
    )
