"""The FastAPI application: state, lifespan, auth, error shape, routers, and UI installers.

Installers: ``INSTALLERS`` is a list of ``(app, state) -> None`` functions called by
``create_app`` after the API routes are mounted; they add routers, static files or middleware
(the dashboard's ``hivecell.server.web.install`` is appended automatically when that module
exists). Installers run before start-up, so they must not touch ``state.store``/``manager``
then; at request time ``state`` is fully set up.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.routing import Route

from hivecell.agent.llm.config import ProviderConfig, load_provider
from hivecell.crew import records as crew_records
from hivecell.crew.host import CrewHost
from hivecell.homedir import secure_home
from hivecell.pool.capacity import Capacity, Host, caps_for
from hivecell.pool.metrics import SandboxStats, StatsSampler
from hivecell.pool.warm import WarmPool
from hivecell.sandbox.base import SandboxProvider
from hivecell.sandbox.router import ProviderRouter
from hivecell.server.auth import TokenLinkMiddleware
from hivecell.server.errors import install_error_handlers
from hivecell.server.events import EventHub
from hivecell.server.guard import GuardPolicy, RequestGuard
from hivecell.server.manager import TaskManager, default_spec
from hivecell.server.mcp import PATH as MCP_PATH
from hivecell.server.mcp import McpEndpoint
from hivecell.server.metrics import ServerMetrics
from hivecell.server.sessionwatch import SessionWatch
from hivecell.server.settings import Preferences, ServerConfig, load_preferences
from hivecell.sessions.proxy.host import ProxyHost
from hivecell.sessions.service import SessionService
from hivecell.store import TaskStore

API_PREFIX = "/api/v1"


class ServerState:
    """Everything a request handler may need; ``store`` and ``manager`` exist once started."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.hub = EventHub()
        self.prefs = Preferences()
        # one router: every id finds its own provider; a spec's provider picks who creates
        self.provider: SandboxProvider = ProviderRouter(config.home, config.sandbox_provider)
        self.metrics = ServerMetrics()
        self.sampler = StatsSampler(self.provider, interval=config.stats_interval)
        self.sampler.subscribe(self._stats_round)
        self.host = Host.detect()
        # Capacity counts what sandboxes really use: the sampler's latest figures.
        self.capacity = Capacity(
            self.provider, lambda: caps_for(self.prefs.capacity, self.host), self.sampler.latest
        )
        self.pool = WarmPool(
            self.provider,
            self.capacity,
            settings=lambda: self.prefs.pool,
            default_spec=lambda: default_spec(self.prefs),
            on_change=self._pool_changed,
            on_ready=lambda sandbox_id: self.hub.publish(
                "sandbox.created", {"sandbox_id": sandbox_id, "task_id": None, "pool": True}
            ),
            on_removed=lambda sandbox_id: self.hub.publish(
                "sandbox.destroyed", {"sandbox_id": sandbox_id}
            ),
        )
        self._store: TaskStore | None = None
        self._manager: TaskManager | None = None
        self.mcp = McpEndpoint(self)
        self.crews = CrewHost()
        self.recovered: dict[str, list[str]] = {}
        self.model_proxy = ProxyHost(config.home, self._session_provider)
        self.sessions = SessionService(config.home, dict(config.environ), self.model_proxy)
        self.session_watch = SessionWatch(self.sessions, self.hub)

    def _session_provider(self, name: str | None, model: str | None) -> ProviderConfig:
        """The model proxy's provider for a session (sync: reads config.toml)."""
        return load_provider(
            name,
            model=model,
            config_path=self.config.config_path,
            environ=self.config.environ,
            keyring=self.config.key_store.get,
        )

    @property
    def store(self) -> TaskStore:
        assert self._store is not None, "the server has not started"
        return self._store

    @property
    def manager(self) -> TaskManager:
        assert self._manager is not None, "the server has not started"
        return self._manager

    async def start(self, store: TaskStore) -> TaskManager:
        self.prefs = await anyio.to_thread.run_sync(load_preferences, self.config.config_path)
        if self.config.max_concurrent is not None:
            self.prefs = self.prefs.model_copy(
                update={"max_concurrent": self.config.max_concurrent}
            )
        if self.config.pool_size is not None:
            pool = self.prefs.pool.model_copy(update={"size": self.config.pool_size})
            self.prefs = self.prefs.model_copy(update={"pool": pool})
        self._store = store
        self._manager = TaskManager(
            provider=self.provider,
            store=store,
            hub=self.hub,
            prefs=lambda: self.prefs,
            capacity=self.capacity,
            pool=self.pool,
        )
        self.recovered = await self._manager.recover()
        self.recovered["crews"] = await crew_records.recover(store)
        self.recovered["crew_desktops"] = await crew_records.remove_orphan_desktops(
            store, self.provider
        )
        return self._manager

    def _stats_round(self, stats: list[SandboxStats]) -> None:
        """Each sampling round: one ``sandbox.stats`` event with every running sandbox."""
        self.hub.publish("sandbox.stats", {"items": [s.model_dump(mode="json") for s in stats]})
        self.metrics.set_sandboxes(self.sampler.totals())
        self.capacity.changed()  # new figures: tasks waiting for room look again

    def _pool_changed(self, view: dict[str, Any]) -> None:
        self.hub.publish("pool.changed", view)
        self.metrics.set_pool_size(view["warm"])


Installer = Callable[[FastAPI, ServerState], None]
INSTALLERS: list[Installer] = []


def create_app(config: ServerConfig) -> FastAPI:
    state = ServerState(config)
    # No Swagger UI or ReDoc: both load their code from a CDN into the origin that holds the
    # token. The schema itself is served, behind auth, by ``api/docs.py``.
    app = FastAPI(
        title="hivecell",
        version="1",
        lifespan=_lifespan(state),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.hivecell = state
    install_error_handlers(app)
    app.add_middleware(TokenLinkMiddleware, token=config.token)
    app.add_middleware(RequestGuard, policy=_policy(config))  # added last: runs first
    _include_api(app)
    # MCP over Streamable HTTP (an ASGI endpoint), behind the same guard as the API.
    app.router.routes.append(Route(MCP_PATH, endpoint=state.mcp))
    for install in [*INSTALLERS, *_web_installer()] if config.ui else []:
        install(app, state)
    return app


def _policy(config: ServerConfig) -> GuardPolicy:
    return GuardPolicy(
        bind_host=config.bind_host,
        allowed_hosts=config.allowed_hosts,
        json_limit=config.max_json_bytes,
        upload_limit=config.max_upload_bytes,
        upload_paths=frozenset({API_PREFIX + "/tasks", API_PREFIX + "/crews"}),
    )


def _lifespan(state: ServerState) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(secure_home, state.config.home)
        async with TaskStore(state.config.database_url) as store:
            manager = await state.start(store)
            async with anyio.create_task_group() as tg:
                await tg.start(manager.run)
                await tg.start(state.sampler.run)
                tg.start_soon(state.metrics.consume, state.hub)
                # After recovery (which removes an earlier run's warm sandboxes).
                await tg.start(state.pool.run)
                await tg.start(state.crews.run)
                await tg.start(state.session_watch.run)
                await tg.start(state.model_proxy.run)
                try:
                    async with state.mcp.run():  # its sandboxes go before the manager stops
                        yield
                finally:
                    with anyio.CancelScope(shield=True):  # their tasks end through the manager
                        await state.crews.stop("interrupted: the server stopped")
                    tg.cancel_scope.cancel()
            await manager.interrupt_queued()

    return lifespan


def _include_api(app: FastAPI) -> None:
    from hivecell.server.api import (
        crews,
        docs,
        events,
        files,
        metrics,
        pool,
        providers,
        sandboxes,
        sessions,
        snapshots,
        system,
        tasks,
    )

    for module in (tasks, crews, files, sandboxes, snapshots, pool, providers, system, events):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(sessions.router, prefix=API_PREFIX)
    app.include_router(docs.router)
    app.include_router(metrics.router)  # /metrics, where Prometheus looks by default


def _web_installer() -> list[Installer]:
    try:
        web = importlib.import_module("hivecell.server.web")
    except ModuleNotFoundError as exc:
        if exc.name != "hivecell.server.web":
            raise  # the module exists but is broken: say so instead of serving without UI
        return []
    return [web.install]
