"""A real third-party coding agent: Aider from PyPI in a sandboxed session, talking to a
scripted OpenAI-compatible server through the model proxy, edits a file. The change shows in
the session branch's diff, the call in the audit log and the usage; the key stays outside."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.script import Reply
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sessions.proxy.host import ProxyHost
from hivecell.sessions.service import SessionCreate, SessionService
from tests.sessions.aider import ensure_aider
from tests.sessions.helpers import make_repo, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(900)]
SECRET = "sk-aider-must-not-see-0099"
NEW = 'def greet():\n    return "hello from aider"\n'
NOTES = "Greetings are returned, not printed.\n"
# an edit of a tracked file and a new file, each in Aider's whole-file format
EDIT = f"hello.py\n```python\n{NEW}```\n\nNOTES.md\n```\n{NOTES}```\n"


@pytest.fixture(scope="session")
def aider_bin() -> Path:
    return ensure_aider(dict(os.environ))


def repo_with_hello(path: Path) -> Path:
    repo = make_repo(path)
    (repo / "hello.py").write_text("def greet():\n    pass\n")
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    subprocess.run(["git", "-C", str(repo), "add", "hello.py"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "hello"], check=True, env=env)
    return repo


async def until_in_file(path: Path, text: str, timeout: float = 240) -> None:
    file = anyio.Path(path)
    with anyio.fail_after(timeout):
        while True:  # Aider writes when the answer is in: watch the file itself
            if await file.exists() and text in await file.read_text(errors="replace"):
                return
            await anyio.sleep(0.2)


async def until_committed(folder: Path, branch: str, subject: str, timeout: float = 120) -> None:
    git = ["git", "--git-dir", str(folder / "boxgit"), "log", "-1", "--format=%s", branch]
    with anyio.fail_after(timeout):
        while True:  # Aider commits once the model has named the commit
            done = await anyio.run_process(git, check=False)
            if done.stdout.decode().startswith(subject):
                return
            await anyio.sleep(0.2)


async def until_audited(svc: SessionService, name: str, path: str, timeout: float = 60) -> Any:
    """The audit log once it records a write of ``path`` (its file watcher runs on its own
    time: inotify events are read in batches)."""
    with anyio.fail_after(timeout):
        while True:
            entries = await svc.audit(name, 0, 1000)
            if any(e.action == "file_write" and path in (e.target or "") for e in entries):
                return entries
            await anyio.sleep(0.2)


async def test_aider_edits_a_file_through_the_model_proxy(
    shome: Path, tmp_path: Path, aider_bin: Path
) -> None:
    repo = repo_with_hello(tmp_path / "repo")
    # Aider asks to add hello.py to the chat when the first answer names it, then asks again
    # with the file in; the edit lands from that second answer. Then the commit message.
    steps = [Reply(text=EDIT, prompt_tokens=900, completion_tokens=40)] * 2
    async with ScriptedLLMServer(steps, default=Reply(text="Make greet say hello")) as up:
        llm = ProviderConfig(name="t", base_url=up.base_url, api_key=SECRET, model="gpt-4o-mini")
        host = ProxyHost(shome, lambda name, model: llm)
        async with anyio.create_task_group() as tg:
            await tg.start(host.run)
            svc = SessionService(shome, {"PATH": f"{aider_bin}:{os.environ['PATH']}"}, host)
            create = SessionCreate(name="aid", agent="aider", repo=str(repo), model="gpt-4o-mini")
            view = await svc.create(create)
            assert view.isolation == "sandbox"
            await wait_status(svc, "aid", "idle", timeout=240)  # at its prompt, quiet
            await svc.send("aid", "make greet return a greeting", True)
            await until_in_file(Path(view.cwd) / "hello.py", "hello from aider")
            await until_in_file(Path(view.cwd) / "NOTES.md", NOTES)
            # Aider commits its edit: in the box's own git (the repository's is read-only).
            await until_committed(shome / "sessions" / "aid", view.branch or "", "Make greet")
            diff = await svc.diff("aid")
            usage = (await svc.get("aid")).usage
            entries = await until_audited(svc, "aid", "hello.py")
            await svc.destroy("aid", force=True)
            tg.cancel_scope.cancel()
    first = up.requests[0]
    assert first.path == "/v1/chat/completions" and first.body["model"] == "gpt-4o-mini"
    assert first.headers["authorization"] == f"Bearer {SECRET}"
    assert "make greet return a greeting" in str(first.body["messages"])
    assert '+    return "hello from aider"' in diff["diff"]
    assert {"status": "M", "path": "hello.py"} in diff["files"]
    assert {"status": "A", "path": "NOTES.md"} in diff["files"]
    assert usage is not None and usage.prompt_tokens >= 900 and usage.cost_usd > 0
    calls = [e for e in entries if e.action == "network_request"]
    assert calls and calls[0].detail is not None and calls[0].detail["model"] == "gpt-4o-mini"
    writes = [e for e in entries if e.action == "file_write" and "hello.py" in (e.target or "")]
    assert writes, [e.model_dump() for e in entries]
