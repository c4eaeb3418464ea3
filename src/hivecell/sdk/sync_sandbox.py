"""``Sandbox``: the blocking twin of ``AsyncSandbox``.

It runs an ``AsyncSandbox`` on a private event loop thread (an anyio blocking portal) so
there is one implementation of every operation, not two that drift apart.

    with Sandbox.create() as sb:
        print(sb.exec(["echo", "hi"]).stdout)
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from hivecell.sandbox.base import NetworkMode, SandboxInfo
from hivecell.sdk.async_sandbox import AsyncClipboard, AsyncFiles, AsyncSandbox, AsyncWindows

T = TypeVar("T")


def _blocking(owner: type, name: str) -> Callable[..., Any]:
    """A sync method that runs ``owner.name`` on the portal; keeps the async docstring."""

    def method(self: _Blocking, *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(partial(getattr(self._target, name), *args, **kwargs))

    method.__name__ = name
    method.__doc__ = getattr(owner, name).__doc__
    return method


class _Blocking:
    def __init__(self, portal: BlockingPortal, target: Any) -> None:
        self._portal = portal
        self._target = target


class Files(_Blocking):
    read = _blocking(AsyncFiles, "read")
    write = _blocking(AsyncFiles, "write")
    list = _blocking(AsyncFiles, "list")
    remove = _blocking(AsyncFiles, "remove")


class Clipboard(_Blocking):
    read = _blocking(AsyncClipboard, "read")
    write = _blocking(AsyncClipboard, "write")


class Windows(_Blocking):
    list = _blocking(AsyncWindows, "list")
    activate = _blocking(AsyncWindows, "activate")
    close = _blocking(AsyncWindows, "close")


class Sandbox(_Blocking):
    call = _blocking(AsyncSandbox, "call")
    exec = _blocking(AsyncSandbox, "exec")
    screenshot = _blocking(AsyncSandbox, "screenshot")
    screen_size = _blocking(AsyncSandbox, "screen_size")
    wait_for_settle = _blocking(AsyncSandbox, "wait_for_settle")
    health = _blocking(AsyncSandbox, "health")
    click = _blocking(AsyncSandbox, "click")
    double_click = _blocking(AsyncSandbox, "double_click")
    right_click = _blocking(AsyncSandbox, "right_click")
    move = _blocking(AsyncSandbox, "move")
    drag = _blocking(AsyncSandbox, "drag")
    scroll = _blocking(AsyncSandbox, "scroll")
    type = _blocking(AsyncSandbox, "type")
    key = _blocking(AsyncSandbox, "key")
    open_app = _blocking(AsyncSandbox, "open_app")
    open_url = _blocking(AsyncSandbox, "open_url")
    open_file = _blocking(AsyncSandbox, "open_file")

    def __init__(self, stack: ExitStack, portal: BlockingPortal, target: AsyncSandbox) -> None:
        super().__init__(portal, target)
        self._stack = stack
        self.files = Files(portal, target.files)
        self.clipboard = Clipboard(portal, target.clipboard)
        self.windows = Windows(portal, target.windows)

    @property
    def id(self) -> str:
        return str(self._target.id)

    @property
    def info(self) -> SandboxInfo:
        return self._target.info

    @classmethod
    def create(
        cls,
        provider: str = "local",
        *,
        resolution: tuple[int, int] = (1280, 800),
        network: NetworkMode = "offline",
        network_allow: list[str] | None = None,
        memory_mb: int | None = 4096,
        max_pids: int | None = 1024,
        cpus: float | None = 2.0,
        disk_mb: int | None = 4096,
        glx: bool = False,
        inbox_writable: bool = False,
        home: str | Path | None = None,
    ) -> Sandbox:
        """Create and connect a sandbox; it is destroyed by ``kill()`` or leaving ``with``."""
        factory = partial(
            AsyncSandbox.create,
            provider,
            resolution=resolution,
            network=network,
            network_allow=network_allow,
            memory_mb=memory_mb,
            max_pids=max_pids,
            cpus=cpus,
            disk_mb=disk_mb,
            glx=glx,
            inbox_writable=inbox_writable,
            home=home,
        )
        return cls._open(factory)

    @classmethod
    def connect(
        cls, sandbox_id: str, provider: str = "local", *, home: str | Path | None = None
    ) -> Sandbox:
        """Attach to an existing sandbox; leaving ``with`` only disconnects."""
        return cls._open(partial(AsyncSandbox.connect, sandbox_id, provider, home=home))

    @classmethod
    def _open(cls, factory: Callable[[], Any]) -> Sandbox:
        stack = ExitStack()
        target: AsyncSandbox | None = None
        try:
            portal = stack.enter_context(start_blocking_portal())
            target = portal.call(factory)
            cm: AbstractContextManager[AsyncSandbox] = portal.wrap_async_context_manager(target)
            stack.enter_context(cm)
        except BaseException:
            if target is not None and target._owned:
                portal.call(target.kill)  # never leak a sandbox we just made
            stack.close()
            raise
        return cls(stack, portal, target)

    snapshot = _blocking(AsyncSandbox, "snapshot")
    restore = _blocking(AsyncSandbox, "restore")
    snapshots = _blocking(AsyncSandbox, "snapshots")
    delete_snapshot = _blocking(AsyncSandbox, "delete_snapshot")

    def fork(self) -> Sandbox:
        """A new VM from this one's current state, connected; closing it destroys it."""
        return type(self)._open(self._target.fork)

    def close(self) -> None:
        """Disconnect; destroys the sandbox too if this object created it."""
        self._stack.close()

    def kill(self) -> None:
        """Destroy the sandbox now."""
        self._target._owned = True
        self._stack.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        et: builtins.type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
