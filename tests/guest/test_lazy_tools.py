"""Tool modules imported on their first call (guest.agent.LAZY_TOOLS): listed, precompiled,
kept out of the boot, and imported once however many first calls race."""

from __future__ import annotations

import importlib
import subprocess
import sys

import anyio
import pytest

from hivecell.guest import boot, dispatch
from hivecell.guest.agent import LAZY_TOOLS, build_dispatcher
from hivecell.guest.context import CallContext, GuestConfig, Services
from hivecell.guest.dispatch import Dispatcher

FAKE = "tests.guest.lazyfake"


@pytest.mark.parametrize("module", sorted(LAZY_TOOLS))
def test_the_listed_methods_are_the_modules_own(module: str) -> None:
    router = importlib.import_module(module).router
    assert sorted(router.handlers) == sorted(LAZY_TOOLS[module])
    assert module in boot.LAZY_MODULES  # precompiled by the host like the boot's modules


def test_the_agent_boots_without_them() -> None:
    code = (
        "import sys; from hivecell.guest import run; from hivecell.guest.agent import "
        "build_dispatcher, LAZY_TOOLS; names = build_dispatcher().names; "
        "print(sorted(m for m in LAZY_TOOLS if m in sys.modules)); "
        "print(all(n in names for ns in LAZY_TOOLS.values() for n in ns))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"]


def test_the_method_list_names_them() -> None:
    names = build_dispatcher().names
    assert {n for ns in LAZY_TOOLS.values() for n in ns} <= set(names)


@pytest.mark.anyio
async def test_racing_first_calls_import_the_module_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.modules.pop(FAKE, None)
    imported: list[str] = []
    real = importlib.import_module

    def counting(name: str) -> object:
        imported.append(name)
        return real(name)

    monkeypatch.setattr(dispatch.importlib, "import_module", counting)
    dispatcher = Dispatcher(lazy={FAKE: ("ping",)})
    ctx = CallContext(Services(GuestConfig()), 1, _no_notify)
    results: list[object] = []

    async def call() -> None:
        results.append(await dispatcher.call("ping", {}, ctx))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(call)
    assert len(results) == 5 and all(r == results[0] and r["time"] == 0.0 for r in results)
    await dispatcher.call("ping", {}, ctx)
    assert imported == [FAKE]


async def _no_notify(method: str, params: dict[str, object]) -> None:
    return None
