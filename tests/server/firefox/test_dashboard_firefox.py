"""The dashboard in Debian's Firefox ESR, driven over WebDriver BiDi, against a real server, real
sandboxes and a scripted model. Any console error or uncaught exception fails the test."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.server.browser.conftest import Hivecell, running_hivecell
from tests.server.firefox.bidi import BiDi, BiDiError, session

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
FIREFOX = "/usr/bin/firefox-esr"
DESCRIPTION = "Write the answer"


def _endpoint(process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> str:
    """The BiDi URL Firefox prints once listening (port 0: it picks a free one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(r"WebDriver BiDi listening on (ws://\S+)", log.read_text()):
            return match.group(1) + "/session"
        if process.poll() is not None:
            raise AssertionError(f"firefox exited ({process.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"firefox did not listen within {timeout} s:\n{log.read_text()}")


@pytest.fixture
def firefox() -> Iterator[str]:
    """A headless Firefox on a fresh profile; yields its BiDi endpoint. Killed as a process
    group so its content processes go too."""
    profile = Path(tempfile.mkdtemp(prefix="hc-ff-"))
    log = profile / "stderr.log"
    with log.open("wb") as stderr:  # a file, not a pipe: nobody drains Firefox's chatter
        process = subprocess.Popen(
            [FIREFOX, "-headless", "-no-remote", "-profile", str(profile),
             "--remote-debugging-port=0"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        yield _endpoint(process, log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def hivecell(short_home: Path) -> Iterator[Hivecell]:
    """``hivecell up`` with a model that writes an output file from the shell, then finishes."""
    verdict = {"complete": True, "success": True, "summary": "wrote the answer"}
    shell = {"command": "echo blue > /shared/outbox/answer.txt"}
    steps = [
        {"kind": "reply", "tool_calls": [{"name": "run_shell", "arguments": shell}]},
        {"kind": "reply", "text": "Done."},
    ]
    script = short_home / "script.json"
    script.write_text(
        json.dumps({"steps": steps, "default": {"kind": "reply", "text": json.dumps(verdict)}})
    )
    with running_hivecell(short_home, script) as running:
        yield running


async def until(ff: BiDi, tab: str, expression: str, timeout: float = 30) -> Any:
    """Poll ``expression`` until truthy; errors while a page is loading count as not yet."""
    last: str = "never evaluated"
    with anyio.move_on_after(timeout):
        while True:
            try:
                if value := await ff.evaluate(tab, expression):
                    return value
                last = repr(value)
            except BiDiError as error:
                last = str(error)
            await anyio.sleep(0.1)
    raise AssertionError(f"{expression} did not hold within {timeout} s (last: {last})")


async def follow(ff: BiDi, tab: str, link: str, tries: int = 5) -> None:
    """Click a link until the page leaves the dashboard. The live lists re-render as tasks
    end, so a row can move between reading its position and the pointer's click (seen once
    under load: the click landed beside the link and the test waited on the wrong page)."""
    for _ in range(tries):
        await ff.click(tab, link)
        with contextlib.suppress(AssertionError):
            await until(ff, tab, "location.pathname !== '/'", timeout=5)
            return
    raise AssertionError(f"clicking {link} {tries} times never left the dashboard")


def q(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)})"


async def dispatch(ff: BiDi, tab: str) -> str:
    """Fill the new-task form with real clicks and keys, run it; returns the task id."""
    await ff.click(tab, "textarea[name=description]")
    await ff.type_text(tab, DESCRIPTION)
    assert await ff.evaluate(tab, q("textarea[name=description]") + ".value") == DESCRIPTION
    await ff.click(tab, "#run")
    return str(await until(ff, tab, q(".task-card") + "?.dataset.task"))


async def test_dashboard_in_firefox(hivecell: Hivecell, firefox: str) -> None:
    async with session(firefox) as (ff, tab):
        await ff.navigate(tab, hivecell.url)  # the token link sets the cookie, then redirects
        await until(ff, tab, "location.pathname === '/' && location.search === ''")
        assert await ff.evaluate(tab, q("#new-task") + " !== null")
        assert await ff.evaluate(tab, q("#stop-all") + ".textContent.trim()") == "Stop all"
        await until(ff, tab, q("#live") + "?.textContent === 'live'")
        await until(ff, tab, "document.querySelectorAll('#provider option').length === 1")

        task_id = await dispatch(ff, tab)
        row = f"#history tr[data-task='{task_id}']"
        await until(ff, tab, q(f"{row} .badge") + "?.textContent === 'completed'", timeout=45)

        await follow(ff, tab, f"{row} a")
        await until(ff, tab, q("#task-status .badge") + "?.textContent === 'completed'")
        await until(ff, tab, q("#outputs a") + "?.textContent === 'answer.txt'")
        image = q("#replay-image")
        await until(ff, tab, f"!{image}.hidden && {image}.complete && {image}.naturalWidth > 0")

        await ff.click(tab, "a[data-nav=environments]")
        await until(ff, tab, "location.pathname === '/environments' && "
                    + q("#sandboxes li, #sandboxes-empty:not([hidden])") + " !== null")  # fmt: skip
        await ff.click(tab, "a[data-nav=settings]")
        await until(ff, tab, "document.querySelectorAll('#providers tr').length === 1")
        await anyio.sleep(0.5)  # late errors from the last page's scripts
        errors = ff.console_errors()
    assert errors == [], "console errors:\n" + "\n".join(errors)
