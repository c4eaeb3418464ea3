"""A minimal WebDriver BiDi client: enough to drive Debian's Firefox, which speaks BiDi natively
(Playwright cannot drive it and there is no geckodriver here).

One reader task owned by the client's task group routes responses to their command ids and
events to ``events``; every command has a timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import websockets

Json = dict[str, Any]


class BiDiError(Exception):
    pass


class BiDi:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[anyio.Event, list[Json]]] = {}
        self.events: list[Json] = []

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):  # session.end closes it
            await self._route()

    async def _route(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if message.get("type") == "event":
                self.events.append(message)
            elif (waiter := self._waiting.pop(message.get("id"), None)) is not None:
                waiter[1].append(message)
                waiter[0].set()

    async def send(self, method: str, params: Json | None = None, timeout: float = 30) -> Json:
        command_id = next(self._ids)
        done, box = anyio.Event(), list[Json]()
        self._waiting[command_id] = (done, box)
        try:
            with anyio.fail_after(timeout):
                await self._ws.send(
                    json.dumps({"id": command_id, "method": method, "params": params or {}})
                )
                await done.wait()
        finally:
            self._waiting.pop(command_id, None)
        if box[0]["type"] == "error":
            raise BiDiError(f"{method}: {box[0]['error']}: {box[0].get('message')}")
        return dict(box[0]["result"])

    async def evaluate(self, context: str, expression: str, timeout: float = 30) -> Any:
        """The value of ``expression`` (awaited) in the page; primitives only, so callers
        return JSON.stringify(...) for anything structured."""
        result = await self.send("script.evaluate", {
            "expression": expression, "target": {"context": context},
            "awaitPromise": True, "resultOwnership": "none",
        }, timeout)  # fmt: skip
        if result["type"] == "exception":
            raise BiDiError(f"{expression}: {result['exceptionDetails']['text']}")
        value = result["result"]
        if value["type"] not in ("string", "number", "boolean", "null", "undefined"):
            raise BiDiError(f"{expression}: returned a {value['type']}, not a primitive")
        return value.get("value")

    async def navigate(self, context: str, url: str, timeout: float = 30) -> None:
        params = {"context": context, "url": url, "wait": "complete"}
        await self.send("browsingContext.navigate", params, timeout)

    async def click(self, context: str, selector: str) -> None:
        """A real pointer click at the centre of the first element matching ``selector``."""
        centre = await self.evaluate(
            context,
            f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            el.scrollIntoView({{block: "center"}});
            const r = el.getBoundingClientRect();
            return JSON.stringify([Math.round(r.x + r.width / 2), Math.round(r.y + r.height / 2)]);
        }})()""",
        )
        x, y = json.loads(centre)
        await self._perform(context, "pointer", [
            {"type": "pointerMove", "x": x, "y": y},
            {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0},
        ], parameters={"pointerType": "mouse"})  # fmt: skip

    async def type_text(self, context: str, text: str) -> None:
        """Real key events into whatever has focus."""
        keys = [{"type": t, "value": c} for c in text for t in ("keyDown", "keyUp")]
        await self._perform(context, "key", keys)

    async def _perform(
        self, context: str, kind: str, actions: list[Json], parameters: Json | None = None
    ) -> None:
        source: Json = {"type": kind, "id": kind, "actions": actions}
        if parameters:
            source["parameters"] = parameters
        await self.send("input.performActions", {"context": context, "actions": [source]})

    def console_errors(self) -> list[str]:
        """Console errors and uncaught exceptions seen so far (``log.entryAdded``)."""
        return [
            f"{e['params']['type']}: {e['params'].get('text')} @ {_where(e['params'])}"
            for e in self.events
            if e["method"] == "log.entryAdded" and e["params"].get("level") == "error"
        ]


def _where(entry: Json) -> str:
    frames = entry.get("stackTrace", {}).get("callFrames") or [{}]
    return f"{frames[0].get('url', '?')}:{frames[0].get('lineNumber', '?')}"


@asynccontextmanager
async def session(url: str, timeout: float = 30) -> AsyncIterator[tuple[BiDi, str]]:
    """A BiDi session on ``url`` subscribed to the log, with a fresh top-level tab; yields the
    client and that tab's context id."""
    with anyio.fail_after(timeout):
        ws = await websockets.connect(url, max_size=None)
    async with ws, anyio.create_task_group() as tg:
        bidi = BiDi(ws)
        tg.start_soon(bidi._read)
        await bidi.send("session.new", {"capabilities": {}})
        await bidi.send("session.subscribe", {"events": ["log.entryAdded"]})
        # A tab of our own, beside the one Firefox opened: closing the last tab would end it.
        tree = await bidi.send("browsingContext.getTree", {"maxDepth": 0})
        assert tree["contexts"], "Firefox started without a tab"
        created = await bidi.send("browsingContext.create", {"type": "tab"})
        context = created["context"]
        try:
            yield bidi, context
        finally:
            with anyio.move_on_after(10, shield=True):
                await bidi.send("browsingContext.close", {"context": context})
                await bidi.send("session.end")
            tg.cancel_scope.cancel()
