"""Method registry and the validating wrapper every handler goes through.

Handlers are plain ``async def handler(params, ctx) -> Result`` functions registered on a
``Router`` per tool module. The dispatcher validates params against the contract in
``hivecell.protocol.methods`` (pydantic ValidationError -> invalid params) and checks the
result type; turning exceptions into wire errors happens in one place,
``hivecell.protocol.jsonrpc.exception_to_error``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from hivecell.errors import InternalError, MethodNotFound
from hivecell.guest.context import CallContext, GuestConfig
from hivecell.protocol.methods import METHODS, MethodSpec, Params, Result

P = TypeVar("P", bound=Params)
Handler = Callable[[Any, CallContext], Awaitable[Result]]
SyncHandler = Callable[[Any, GuestConfig], Result]


class Router:
    """Collects handlers of one tool module."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def method(self, name: str) -> Callable[[Handler], Handler]:
        if name not in METHODS:
            raise ValueError(f"{name!r} is not in hivecell.protocol.methods.METHODS")

        def register(fn: Handler) -> Handler:
            self.handlers[name] = fn
            return fn

        return register

    def threaded(self, name: str) -> Callable[[SyncHandler], SyncHandler]:
        """Register a blocking ``fn(params, config)``; each call runs on a worker thread."""

        def register(fn: SyncHandler) -> SyncHandler:
            async def handler(params: Any, ctx: CallContext) -> Result:
                return await anyio.to_thread.run_sync(fn, params, ctx.config)

            self.method(name)(handler)
            return fn

        return register


class Dispatcher:
    """``lazy``: tool modules imported on the first call of one of their methods (module
    name -> the methods its router registers), so the boot does not wait for them."""

    def __init__(self, *routers: Router, lazy: Mapping[str, tuple[str, ...]] = {}) -> None:
        self._handlers: dict[str, tuple[MethodSpec, Handler]] = {}
        self._lazy = {name: module for module, names in lazy.items() for name in names}
        self._loading = anyio.Lock()
        for router in routers:
            self._add(router)

    def _add(self, router: Router) -> None:
        for name, fn in router.handlers.items():
            self._handlers[name] = (METHODS[name], fn)

    @property
    def names(self) -> list[str]:
        return sorted({*self._handlers, *self._lazy})

    async def _entry(self, method: str) -> tuple[MethodSpec, Handler] | None:
        if method in self._lazy and method not in self._handlers:
            async with self._loading:  # concurrent first calls import it once
                if method not in self._handlers:
                    module = await anyio.to_thread.run_sync(
                        importlib.import_module, self._lazy[method]
                    )
                    self._add(module.router)
        return self._handlers.get(method)

    async def call(self, method: str, params: dict[str, Any] | None, ctx: CallContext) -> Any:
        entry = await self._entry(method)
        if entry is None:
            raise MethodNotFound(
                f"method not found: {method!r}; call get_agent_info for the method list", op=method
            )
        spec, fn = entry
        parsed = spec.params.model_validate(params or {})
        if ctx.config.policy is not None:
            parsed = ctx.config.policy.check(method, parsed)
        result = await fn(parsed, ctx)
        if not isinstance(result, spec.result):
            raise InternalError(f"{method} returned {type(result).__name__}", op=method)
        return result.model_dump(mode="json")
