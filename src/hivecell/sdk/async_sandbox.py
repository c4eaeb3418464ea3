"""``AsyncSandbox``: drive one sandbox from asyncio/anyio code.

    async with await AsyncSandbox.create() as sb:
        result = await sb.exec(["echo", "hi"])
        png = await sb.screenshot()

A sandbox made by ``create`` is destroyed when the block ends; one reached with
``connect`` is only disconnected.
"""

from __future__ import annotations

import base64
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from hivecell.config import resolve_home
from hivecell.errors import ConfigError, SandboxError
from hivecell.protocol import methods as m
from hivecell.sandbox.base import (
    NetworkMode,
    SandboxInfo,
    SandboxProvider,
    SandboxSpec,
    SnapshotInfo,
    Snapshotting,
)
from hivecell.sandbox.guest_client import GuestClient, OutputHandler
from hivecell.sandbox.router import ProviderRouter


class AsyncSandbox:
    def __init__(self, info: SandboxInfo, provider: SandboxProvider, *, owned: bool) -> None:
        self.info = info
        self._provider = provider
        self._owned = owned
        self._guest: GuestClient | None = None
        self._stack = AsyncExitStack()
        self.files = AsyncFiles(self)
        self.clipboard = AsyncClipboard(self)
        self.windows = AsyncWindows(self)

    @property
    def id(self) -> str:
        return self.info.id

    # --- lifecycle ---------------------------------------------------------------------
    @classmethod
    async def create(
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
    ) -> AsyncSandbox:
        """Create a sandbox (not yet connected: use ``async with``); ``provider``: local (a
        bubblewrap box) or qemu (a VM from ``hivecell template build``)."""
        backend = ProviderRouter(resolve_home(home), provider)
        spec = SandboxSpec(
            width=resolution[0],
            height=resolution[1],
            network=network,
            network_allow=network_allow or [],
            memory_mb=memory_mb,
            max_pids=max_pids,
            cpus=cpus,
            disk_mb=disk_mb,
            glx=glx,
            inbox_writable=inbox_writable,
        )
        return cls(await backend.create(spec), backend, owned=True)

    @classmethod
    async def connect(
        cls, sandbox_id: str, provider: str = "local", *, home: str | Path | None = None
    ) -> AsyncSandbox:
        """An existing sandbox, found by its id whatever its provider (``vm-`` ids are VMs)."""
        backend = ProviderRouter(resolve_home(home), provider)
        return cls(await backend.info(sandbox_id), backend, owned=False)

    async def __aenter__(self) -> AsyncSandbox:
        client = await self._provider.connect(self.id)
        self._guest = await self._stack.enter_async_context(client)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
        self._guest = None
        if self._owned:
            await self._provider.destroy(self.id)

    async def kill(self) -> None:
        """Destroy the sandbox now (processes, mounts and folders)."""
        await self._stack.aclose()
        self._guest = None
        await self._provider.destroy(self.id)

    # --- snapshots (VMs) ------------------------------------------------------------------
    async def snapshot(self, name: str) -> SnapshotInfo:
        """Save this VM's whole state (memory, desktop, disk) as ``name``; it keeps running."""
        return await self._snapshotting("snapshot").snapshot(self.id, name)

    async def restore(self, name: str) -> None:
        """Rewind this VM to snapshot ``name``; a connected sandbox reconnects."""
        connected = self._guest is not None
        await self._stack.aclose()
        self._guest = None
        self.info = await self._snapshotting("restore").restore(self.id, name)
        if connected:
            await self.__aenter__()

    async def fork(self) -> AsyncSandbox:
        """A new VM from this one's current state (not connected yet: use ``async with``,
        which destroys it at the end, as for ``create``)."""
        child = await self._snapshotting("fork").fork(self.id)
        return type(self)(child, self._provider, owned=True)

    async def snapshots(self) -> list[SnapshotInfo]:
        return await self._snapshotting("snapshots").snapshots(self.id)

    async def delete_snapshot(self, name: str) -> None:
        await self._snapshotting("delete_snapshot").delete_snapshot(self.id, name)

    def _snapshotting(self, op: str) -> Snapshotting:
        if not isinstance(self._provider, Snapshotting):
            raise ConfigError(
                f"sandbox {self.id}'s provider cannot take snapshots: use a VM (provider='qemu')",
                op=op,
            )
        return self._provider

    # --- raw call ------------------------------------------------------------------------
    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = 120.0,
        on_output: OutputHandler | None = None,
    ) -> Any:
        """Call any guest method by name (see docs/protocol.md)."""
        if self._guest is None:
            raise SandboxError(
                "not connected: use `async with sandbox:` before calling it", op=method
            )
        return await self._guest.call(method, params, timeout=timeout, on_output=on_output)

    @property
    def healthy(self) -> bool:
        return self._guest is not None and self._guest.healthy

    # --- shell ---------------------------------------------------------------------------
    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 60.0,
        on_output: OutputHandler | None = None,
    ) -> m.ExecResult:
        """Run argv (no shell) or, given a string, a /bin/sh command line."""
        params: dict[str, Any] = {
            "cwd": cwd,
            "env": env,
            "stdin": stdin,
            "timeout": timeout,
            "stream": on_output is not None,
        }
        method = "run_shell" if isinstance(command, str) else "exec_command"
        params["command" if isinstance(command, str) else "argv"] = command
        raw = await self.call(method, params, timeout=timeout + 10, on_output=on_output)
        return m.ExecResult.model_validate(raw)

    # --- observe -------------------------------------------------------------------------
    async def screenshot(
        self, format: Literal["png", "jpeg", "webp"] = "png", *, scale: float | None = None
    ) -> bytes:
        raw = await self.call("screenshot", {"format": format, "scale": scale})
        return base64.b64decode(raw["data"])

    async def screen_size(self) -> tuple[int, int]:
        raw = await self.call("get_screen_size")
        return raw["width"], raw["height"]

    async def wait_for_settle(self, timeout: float = 5.0) -> m.SettleResult:
        return m.SettleResult.model_validate(
            await self.call("wait_for_settle", {"timeout": timeout})
        )

    async def health(self) -> m.HealthResult:
        return m.HealthResult.model_validate(await self.call("health_check"))

    # --- act -----------------------------------------------------------------------------
    async def click(self, x: int, y: int, button: str = "left", clicks: int = 1) -> None:
        await self.call("mouse_click", {"x": x, "y": y, "button": button, "clicks": clicks})

    async def double_click(self, x: int, y: int) -> None:
        await self.click(x, y, clicks=2)

    async def right_click(self, x: int, y: int) -> None:
        await self.click(x, y, button="right")

    async def move(self, x: int, y: int) -> None:
        await self.call("mouse_move", {"x": x, "y": y})

    async def drag(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        await self.call(
            "mouse_drag", {"from_x": start[0], "from_y": start[1], "to_x": end[0], "to_y": end[1]}
        )

    async def scroll(self, x: int, y: int, dx: int = 0, dy: int = 0) -> None:
        await self.call("scroll", {"x": x, "y": y, "dx": dx, "dy": dy})

    async def type(self, text: str) -> None:
        await self.call("keyboard_type", {"text": text})

    async def key(self, keys: str) -> None:
        await self.call("keyboard_key", {"keys": keys})

    async def open_app(self, name: str, *, window_timeout: float | None = 10.0) -> m.Launched:
        """Start an app and return once its window is up (``window_timeout=None``: at once)."""
        return await self._launch("open_app", {"name": name}, window_timeout)

    async def open_url(self, url: str, *, window_timeout: float | None = 10.0) -> m.Launched:
        """Open ``url`` in the sandbox's browser; waits for its window like ``open_app``."""
        return await self._launch("open_url", {"url": url}, window_timeout)

    async def open_file(self, path: str, *, window_timeout: float | None = 10.0) -> m.Launched:
        """Open ``path`` with its default app; waits for its window like ``open_app``."""
        return await self._launch("open_file", {"path": path}, window_timeout)

    async def _launch(
        self, method: str, params: dict[str, Any], window_timeout: float | None
    ) -> m.Launched:
        # Waiting is the default: a caller who types right after open_app would otherwise
        # type into nothing while the window is still coming up (the README quick start did).
        if window_timeout is not None:
            params = {**params, "window_timeout": window_timeout, "settle": True}
        return m.Launched.model_validate(await self.call(method, params))


class _Part:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox


class AsyncFiles(_Part):
    async def read(self, path: str, *, binary: bool = False) -> str | bytes:
        raw = await self._sb.call(
            "read_file", {"path": path, "encoding": "base64" if binary else "text"}
        )
        return base64.b64decode(raw["content"]) if binary else raw["content"]

    async def write(self, path: str, data: str | bytes) -> int:
        if isinstance(data, bytes):
            params = {
                "path": path,
                "content": base64.b64encode(data).decode(),
                "encoding": "base64",
            }
        else:
            params = {"path": path, "content": data, "encoding": "text"}
        return int((await self._sb.call("write_file", params))["size"])

    async def list(self, path: str = "/shared") -> list[m.FileEntry]:
        raw = await self._sb.call("list_directory", {"path": path})
        return [m.FileEntry.model_validate(e) for e in raw["entries"]]

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._sb.call("delete_file", {"path": path, "recursive": recursive})


class AsyncClipboard(_Part):
    async def read(self) -> str:
        return str((await self._sb.call("clipboard_read"))["text"])

    async def write(self, text: str) -> None:
        await self._sb.call("clipboard_write", {"text": text})


class AsyncWindows(_Part):
    async def list(self) -> list[m.WindowInfo]:
        raw = await self._sb.call("list_windows")
        return [m.WindowInfo.model_validate(w) for w in raw["windows"]]

    async def activate(self, window_id: str) -> None:
        await self._sb.call("activate_window", {"window_id": window_id})

    async def close(self, window_id: str) -> None:
        await self._sb.call("close_window", {"window_id": window_id})
