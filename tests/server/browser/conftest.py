"""A real hivecell server (``hivecell up``) on a short home, a scripted model endpoint, and
Debian's Chromium driven by Playwright. Console errors fail the test that caused them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[3] / "artifacts" / "screenshots"


def _first_line(process: subprocess.Popen[str], pattern: str, timeout: float = 60.0) -> str:
    """The first stdout line matching ``pattern`` (the process prints its URL when ready)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"process exited ({process.wait()}) before printing {pattern}")
        if match := re.search(pattern, line):
            return match.group(1)
    raise AssertionError(f"no {pattern} within {timeout} s")


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Hivecell:
    url: str  # login link with the token
    base: str
    token: str
    home: Path
    console_errors: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.base}/api/v1{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
        return json.loads(data) if data else None


def start_llm(script: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hivecell.agent.llm.scripted", "--script", str(script),
         "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, _first_line(process, r"(http://\S+)")


# The model variables of whoever runs the tests must not become a provider of the server.
MODEL_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HIVECELL_MODEL")


def start_server(
    home: Path,
    llm_url: str,
    *,
    from_environment: bool = False,
    pool_size: int = 0,
    extra_config: str = "",
) -> tuple[subprocess.Popen[str], str]:
    """``hivecell up``; the model comes from config.toml (plus ``extra_config``, e.g. prices),
    or only from its environment."""
    env = {k: v for k, v in os.environ.items() if k not in MODEL_VARIABLES}
    if from_environment:
        env |= {"OPENAI_API_KEY": "sk-env-key-987654", "OPENAI_BASE_URL": llm_url,
                "HIVECELL_MODEL": "env-model"}  # fmt: skip
    else:
        (home / "config.toml").write_text(
            'default_provider = "scripted"\n\n[providers.scripted]\n'
            f'base_url = "{llm_url}"\nmodel = "scripted-model"\napi_key = "sk-test-key-123456"\n'
            + extra_config
        )
    env |= {"HIVECELL_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "400"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hivecell.cli.main", "up", "--port", "0", "--home", str(home),
         "--pool-size", str(pool_size)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    return process, _first_line(process, r"hivecell is up: (\S+)")


@pytest.fixture
def script_file(short_home: Path) -> Path:
    """Tests write their model script here before asking for ``hivecell``."""
    return short_home / "script.json"


@pytest.fixture
def hivecell(short_home: Path, script_file: Path) -> Iterator[Hivecell]:
    if not script_file.exists():
        script_file.write_text(json.dumps({"steps": []}))
    with running_hivecell(short_home, script_file) as running:
        yield running


@contextmanager
def running_hivecell(
    short_home: Path, script_file: Path, *, from_environment: bool = False, pool_size: int = 0
) -> Iterator[Hivecell]:
    """`hivecell up` against a scripted model playing ``script_file``, both as processes."""
    llm, llm_url = start_llm(script_file)
    try:
        server, link = start_server(
            short_home, llm_url, from_environment=from_environment, pool_size=pool_size
        )
        try:
            base, _, query = link.partition("/?")
            yield Hivecell(link, base, query.removeprefix("token="), short_home)
        finally:
            _stop(server)
    finally:
        _stop(llm)


@pytest.fixture
def browser() -> Iterator[Browser]:
    # Per test, not per session: sync Playwright keeps an event loop running in this thread
    # while it is open, and the anyio tests the same worker runs next could not start theirs.
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, hivecell: Hivecell) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            hivecell.console_errors.append(f"{message.text} @ {message.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: hivecell.console_errors.append(f"uncaught: {exc}"))
    yield page
    context.close()
    assert hivecell.console_errors == [], "console errors:\n" + "\n".join(hivecell.console_errors)


def save_screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def wait_for_js(page: Page, expression: str, timeout_ms: float) -> None:
    """Until ``expression``, evaluated in the page, is truthy. Not ``wait_for_function``:
    when its first check fails it polls by evaluating the string in the page, which the
    dashboard's CSP (no unsafe-eval) refuses."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout_ms} ms: {expression}"
        page.wait_for_timeout(50)
