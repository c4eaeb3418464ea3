"""The agent hands freed memory back once it is quiet after work, never during it."""

from __future__ import annotations

import anyio
import pytest

from hivecell.guest.memory import IdleTrim, malloc_trim

pytestmark = pytest.mark.anyio


class Trims:
    def __init__(self) -> None:
        self.count = 0
        self.done = anyio.Event()

    def __call__(self) -> bool:
        self.count += 1
        self.done.set()
        return True


async def test_quiet_after_work_trims_once() -> None:
    trims = Trims()
    idle = IdleTrim(quiet=0.01, trim=trims)
    async with anyio.create_task_group() as tg:
        tg.start_soon(idle.run)
        for _ in range(3):
            with idle.activity():
                await anyio.lowlevel.checkpoint()
        await trims.done.wait()
        tg.cancel_scope.cancel()
    assert trims.count == 1 and idle.trims == 1


async def test_no_trim_while_a_request_runs() -> None:
    trims = Trims()
    idle = IdleTrim(quiet=0.01, trim=trims)
    long_call_ended = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(idle.run)

        async def long_call() -> None:
            with idle.activity():
                with idle.activity():  # a short call ends while the long one runs
                    await anyio.lowlevel.checkpoint()
                await anyio.sleep(0.1)  # many quiet periods long
                assert trims.count == 0
            long_call_ended.set()

        tg.start_soon(long_call)
        await long_call_ended.wait()
        await trims.done.wait()  # the long call's end starts a quiet period that trims
        tg.cancel_scope.cancel()
    assert trims.count == 1


async def test_quiet_releases_before_it_trims() -> None:
    order: list[str] = []
    trims = Trims()

    async def release() -> None:
        order.append("release")

    def trim() -> bool:
        order.append("trim")
        return trims()

    idle = IdleTrim(quiet=0.01, trim=trim, release=release)
    async with anyio.create_task_group() as tg:
        tg.start_soon(idle.run)
        with idle.activity():
            await anyio.lowlevel.checkpoint()
        await trims.done.wait()
        tg.cancel_scope.cancel()
    assert order == ["release", "trim"]


async def test_nothing_to_trim_without_work() -> None:
    trims = Trims()
    idle = IdleTrim(quiet=0.01, trim=trims)
    with anyio.move_on_after(0.1):
        await idle.run()
    assert trims.count == 0


def test_malloc_trim_runs_on_glibc() -> None:
    assert malloc_trim() is True  # Debian's C library is glibc
