"""State the guest agent's tools share: configuration, the X session, launched processes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from hivecell.guest.memory import IdleTrim
from hivecell.protocol.jsonrpc import RequestId

if TYPE_CHECKING:
    from hivecell.guest.policy import AgentPolicy
    from hivecell.guest.x11 import XSession


@dataclass
class GuestConfig:
    """Limits and locations; built from command-line flags in ``hivecell.guest.__main__``."""

    roots: list[Path] = field(default_factory=lambda: [Path("/shared"), Path.home()])
    max_file_bytes: int = 10 * 1024 * 1024
    display: str | None = None
    token: str | None = None
    heartbeat_interval: float = 2.0
    run_dir: Path = Path("/run/hivecell")
    shell: str = "/bin/sh"
    env: dict[str, str] = field(default_factory=dict)
    network_mode: str = "unknown"
    a11y_bus: str | None = None  # D-Bus address of the AT-SPI registry's bus (boot starts it)
    policy: AgentPolicy | None = None  # the guest's own allow/block lists (policy.py)

    @property
    def vnc_socket(self) -> Path:
        return self.run_dir / "vnc.sock"


class Services:
    """Long-lived, per-agent-process state. One instance per running agent."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self.stop = anyio.Event()
        self.stop_reason = ""
        self.launched: dict[int, list[str]] = {}  # pid -> argv of apps we started
        self.vnc: Any = None  # anyio Process of x11vnc while it runs
        self._x: XSession | None = None
        self.method_names: list[str] = []
        # hands freed memory back once requests stop (memory.py)
        self.idle = IdleTrim(release=self._release_grabber)

    @property
    def x(self) -> XSession:
        """The X session, opened on first use so non-GUI hosts can still run shell tools."""
        if self._x is None:
            from hivecell.guest.x11 import XSession

            self._x = XSession.open(self.config.display)
        return self._x

    async def _release_grabber(self) -> None:
        if self._x is not None:
            await self._x.release_grabber()

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.stop.set()

    def close(self) -> None:
        if self._x is not None:
            self._x.close()
            self._x = None


Notify = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class CallContext:
    """What a handler knows about the call it serves."""

    services: Services
    request_id: RequestId | None
    notify: Notify

    @property
    def config(self) -> GuestConfig:
        return self.services.config
