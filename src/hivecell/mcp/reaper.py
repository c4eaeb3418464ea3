"""The reaper: removes a session's sandboxes once the ``hivecell mcp`` process is gone.

An MCP client ends a stdio server by closing its stdin, and a couple of seconds later sends
SIGTERM and then SIGKILL to its process group (the SDK's client does; desktop clients are no
gentler). Removing sandboxes takes longer than that, and nothing runs after a SIGKILL. So the
server hands the ids to a small process of its own session (out of reach of the group's
signals): ``+ID`` when a sandbox is made, ``-ID`` when it was removed or is kept. When the
pipe closes, for whatever reason the server ended, the reaper removes every id still listed.

    python -m hivecell.mcp.reaper --home HOME --provider local   (ids on stdin)
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
from anyio.abc import Process

from hivecell.errors import HivecellError
from hivecell.sandbox.registry import get_provider

_ID = re.compile(r"^[+-][A-Za-z0-9_-]{1,64}$")


class Reaper:
    """The server's end: start it before the first sandbox is made, close it at the end."""

    def __init__(self, home: Path, provider: str) -> None:
        self._argv = [sys.executable, "-m", "hivecell.mcp.reaper", "--home", str(home)]
        self._argv += ["--provider", provider]
        self._process: Process | None = None

    async def start(self) -> None:
        if self._process is None:
            self._process = await anyio.open_process(
                self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # the client's signals to our group must miss it
            )

    async def adopt(self, sandbox_id: str) -> None:
        """Remove this sandbox when the server is gone (unless ``release``d first)."""
        await self._send(f"+{sandbox_id}")

    async def release(self, sandbox_id: str) -> None:
        await self._send(f"-{sandbox_id}")

    async def close(self) -> None:
        """Hand over: the reaper removes what is still listed, then exits by itself."""
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._process.stdin.aclose()

    async def _send(self, line: str) -> None:
        await self.start()
        assert self._process is not None and self._process.stdin is not None
        await self._process.stdin.send(f"{line}\n".encode())


def read_ids(lines: list[str]) -> list[str]:
    """What is still to remove after these lines (unknown lines are ignored)."""
    ids: dict[str, None] = {}
    for line in lines:
        line = line.strip()
        if not _ID.match(line):
            continue
        if line[0] == "+":
            ids[line[1:]] = None
        else:
            ids.pop(line[1:], None)
    return list(ids)


async def _reap(home: Path, provider_name: str, ids: list[str]) -> None:
    provider = get_provider(provider_name, home)
    for sandbox_id in ids:
        with contextlib.suppress(HivecellError):  # already gone: nothing to do
            await provider.destroy(sandbox_id)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m hivecell.mcp.reaper")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--provider", default="local")
    args = parser.parse_args()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # it ends by itself once its work is done
    ids = read_ids(sys.stdin.readlines())  # until the server's end closes, however it ended
    if ids:
        anyio.run(_reap, args.home, args.provider, ids)


if __name__ == "__main__":
    main()
