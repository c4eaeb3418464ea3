"""The server's end of the model proxy: one unix socket per session that asked for it.

The socket is ``HOME/sessions/NAME/proxy/sock``. The folder (mode 0711, owned by the
server's user) is what boxes and mount namespaces get bound in read-only, so a restarted
server's new socket is seen there without touching the box; nobody else can make, swap
or remove an entry in it. Which session is asking is which socket the call came in on:
there is no token to steal or forge.

Sessions found at start (a restarted server) and made later (``ensure``) are served until
their folder goes; ``reconcile`` looks every ``RECONCILE_S``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx2 as httpx
from anyio.abc import ByteStream, TaskGroup, TaskStatus

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.pricing import ModelPrice, PriceTable
from hivecell.protocol.unixstream import unix_listener
from hivecell.sessions.audit import AuditLog
from hivecell.sessions.proxy import relay
from hivecell.sessions.proxy.usage import Ledger
from hivecell.sessions.spec import SPEC_FILE, SessionSpec, read_spec

log = logging.getLogger(__name__)

PROXY_DIR = "proxy"
SOCKET = "sock"
RECONCILE_S = 2.0
MAX_CONNECTIONS = 32  # per session: an agent cannot take all of the server's descriptors
# (provider name, model) -> the provider; synchronous (reads config.toml), run in a thread.
ResolveProvider = Callable[[str | None, str | None], ProviderConfig]


def socket_dir(folder: Path) -> Path:
    return folder / PROXY_DIR


class ProxyHost:
    def __init__(self, home: Path, resolve: ResolveProvider) -> None:
        self.root = home / "sessions"
        self.resolve = resolve
        self._serving: dict[str, anyio.CancelScope] = {}
        # The reconcile loop and a session's creation both ensure a socket: one at a time,
        # or both bind the same path and the second's "address in use" ended the server.
        self._ensuring = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._client: httpx.AsyncClient | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=20)
        client = httpx.AsyncClient(limits=limits, follow_redirects=False)
        async with client, anyio.create_task_group() as tg:
            self._tg, self._client = tg, client
            try:
                await self.reconcile()
                task_status.started()
                while True:
                    await anyio.sleep(RECONCILE_S)
                    await self.reconcile()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def reconcile(self) -> None:
        """Serve every proxied session there is; stop serving the ones that are gone."""
        names = set(await anyio.to_thread.run_sync(self._proxied, set(self._serving)))
        for name in sorted(names - set(self._serving)):
            try:
                await self.ensure(name)
            except (OSError, ValueError) as exc:  # that session's folder: tried again next round
                log.warning("model proxy for session %s not served: %s", name, exc)
        for name in set(self._serving) - names:
            self._serving.pop(name).cancel()

    def _proxied(self, served: set[str]) -> list[str]:
        """Session names with a proxy; a spec is read only for a session not served yet."""
        found = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if entry.name in served:
                    if os.path.lexists(Path(entry.path) / SPEC_FILE):
                        found.append(entry.name)
                    continue
                with contextlib.suppress(OSError, ValueError):
                    if read_spec(Path(entry.path)).proxy:
                        found.append(entry.name)
        return found

    async def ensure(self, name: str) -> None:
        """Listen for session ``name`` (its spec must say ``proxy``) unless already."""
        async with self._ensuring:
            if self._tg is None or name in self._serving:
                return
            folder = self.root / name
            spec = await anyio.to_thread.run_sync(read_spec, folder)
            sock = await anyio.to_thread.run_sync(_bind, socket_dir(folder))
            try:
                scope = await self._tg.start(self._listen, folder, spec, sock)
            except BaseException:
                sock.close()
                raise
            self._serving[name] = scope

    async def close(self, name: str) -> None:
        scope = self._serving.pop(name, None)
        if scope is not None:
            scope.cancel()

    async def _listen(
        self,
        folder: Path,
        spec: SessionSpec,
        sock: socket.socket,
        *,
        task_status: TaskStatus[anyio.CancelScope],
    ) -> None:
        gate = _SessionGate(self, folder, spec)
        active = 0

        async def one(stream: ByteStream) -> None:
            nonlocal active
            if active >= MAX_CONNECTIONS:
                await stream.aclose()
                return
            active += 1
            try:
                assert self._client is not None
                await relay.serve(stream, gate.gate, self._client)
            finally:
                active -= 1

        with anyio.CancelScope() as scope:
            listener = await unix_listener(sock)
            task_status.started(scope)
            async with listener, anyio.create_task_group() as tg:
                while True:
                    try:
                        await listener.serve(one, tg)
                    except anyio.BrokenResourceError:  # out of descriptors: wait, go on
                        await anyio.sleep(0.1)


class _SessionGate:
    """One session's provider, budget, ledger and audit, as the relay uses them."""

    def __init__(self, host: ProxyHost, folder: Path, spec: SessionSpec) -> None:
        self.host = host
        self.spec = spec
        self.ledger = Ledger(folder, spec.max_cost_usd)
        self.audit = AuditLog(folder, max_bytes=spec.audit_max_bytes)
        self.gate = relay.SessionGate(self.resolve, self.over_budget, self.record)

    async def resolve(self, model: str | None) -> ProviderConfig:
        return await anyio.to_thread.run_sync(self.host.resolve, self.spec.provider, model)

    async def over_budget(self, model: str | None, prices: dict[str, ModelPrice]) -> str | None:
        budget = self.spec.max_cost_usd
        if budget is None:
            return None
        if model is None or PriceTable(prices).lookup(model) is None:
            return (
                f"this session has a budget of ${budget:g} and the price of model {model!r} "
                f'is not known: add [prices."{model}"] (input, output: USD per 1M tokens) to '
                "config.toml, or use a model with a known price"
            )
        spent = await anyio.to_thread.run_sync(self.ledger.over_budget)
        if spent is None:
            return None
        return (
            f"this session's budget of ${budget:g} is spent (${spent.cost_usd:.4f} in "
            f"{spent.requests} calls): create another session with a larger --max-cost"
        )

    async def record(self, call: relay.Call) -> None:
        if call.outcome == "blocked":
            await anyio.to_thread.run_sync(self.ledger.refused)
        else:
            add = functools.partial(self.ledger.add, call.model, call.usage, call.cost_usd)
            await anyio.to_thread.run_sync(add)
        detail: dict[str, object] = {"model": call.model, "status": call.status}
        if call.usage is not None:
            detail |= {
                "prompt_tokens": call.usage.prompt_tokens,
                "completion_tokens": call.usage.completion_tokens,
            }
        if call.cost_usd is not None:
            detail["cost_usd"] = round(call.cost_usd, 6)
        if call.why:
            detail["why"] = call.why
        append = functools.partial(
            self.audit.append,
            session=self.spec.name,
            agent=self.spec.agent,
            action="network_request",
            target=f"{call.method} {call.target}",
            detail=detail,
            outcome=call.outcome,
        )
        try:
            await anyio.to_thread.run_sync(append)
        except OSError as exc:  # a destroyed session's last answer: nothing to keep it in
            log.debug("model call of %s not audited: %s", self.spec.name, exc)


def _bind(folder: Path) -> socket.socket:
    """A listening socket at ``folder/sock``; a dead server's socket there is replaced.
    Bound through ``/proc/self/fd``: session paths may pass a socket path's 108 bytes."""
    folder.mkdir(mode=0o711, exist_ok=True)
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        inside = Path(f"/proc/self/fd/{fd}")
        inside.chmod(0o711)
        path = inside / SOCKET
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{folder / SOCKET} is not a socket: move it away")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            path.chmod(0o666)  # the box's own uid connects; only the box sees the folder
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)
