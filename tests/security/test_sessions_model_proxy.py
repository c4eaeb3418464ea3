"""The model proxy end to end: a shell session in each isolation level calls its model with
curl through the variables the gate sets, and the provider's key is nowhere in its reach."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.script import Reply
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sessions.proxy.host import ProxyHost
from hivecell.sessions.service import SessionCreate, SessionService
from tests.security.test_sessions_isolation import probe
from tests.sessions.helpers import make_repo

pytestmark = [pytest.mark.anyio]
SECRET = "sk-never-in-the-box-7731"
CALL = (
    "curl -sS -H \"authorization: Bearer $OPENAI_API_KEY\" -H 'content-type: application/json' "
    '-d \'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}\' '
    '"$OPENAI_BASE_URL/chat/completions"; echo'
)


@asynccontextmanager
async def proxied(home: Path, base_url: str) -> AsyncIterator[SessionService]:
    llm = ProviderConfig(name="t", base_url=base_url, api_key=SECRET, model="gpt-4o")
    host = ProxyHost(home, lambda name, model: llm)
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        yield SessionService(home, {"PATH": os.environ["PATH"]}, host)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("level", ["sandbox", "worktree", "none"])
async def test_an_agent_reaches_its_model_without_the_key(
    shome: Path, tmp_path: Path, level: str
) -> None:
    repo = make_repo(tmp_path / "repo")
    reply = Reply(text="PROXIED-ANSWER", prompt_tokens=11, completion_tokens=7)
    async with ScriptedLLMServer([reply]) as up, proxied(shome, up.base_url) as svc:
        name = f"mp-{level}"
        await svc.create(SessionCreate(name=name, agent="shell", repo=str(repo), isolation=level))
        out = await probe(svc, name, CALL)
        assert "PROXIED-ANSWER" in out, out
        leaks = await probe(svc, name, f"env | grep -c {SECRET[:12]}; grep -rls {SECRET[:12]} "
                            "/proc/[0-9]*/environ 2>/dev/null | wc -l")  # fmt: skip
        view = await svc.get(name)
        await svc.destroy(name, force=True)
    assert up.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in leaks
    counts = [line.strip() for line in leaks.splitlines() if line.strip().isdigit()]
    assert counts[-2:] == ["0", "0"], leaks
    assert view.proxy and view.usage is not None
    assert (view.usage.requests, view.usage.prompt_tokens) == (1, 11)


async def test_a_box_sees_only_its_own_proxy(shome: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with ScriptedLLMServer([]) as up, proxied(shome, up.base_url) as svc:
        await svc.create(SessionCreate(name="mine", agent="shell", repo=str(repo)))
        await svc.create(SessionCreate(name="other", agent="shell", repo=str(repo)))
        other = shome / "sessions" / "other"
        out = await probe(svc, "mine", f"ls {other}/proxy; ls {shome}/sessions")
        mine = shome / "sessions" / "mine" / "proxy"
        swap = f"rm -f {mine}/sock; ln -s {other}/proxy/sock {mine}/sock; echo rc=$?"
        touch = await probe(svc, "mine", swap)
        assert (mine / "sock").is_socket() and not (mine / "sock").is_symlink()
        for name in ("mine", "other"):
            await svc.destroy(name, force=True)
    assert "No such file or directory" in out and "spec.json" not in out, out
    assert "rc=0" not in touch, touch


async def test_a_budget_needs_a_known_price_at_create(shome: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with ScriptedLLMServer([]) as up, proxied(shome, up.base_url) as svc:
        with pytest.raises(Exception, match=re.escape('prices."my-model"')):
            await svc.create(
                SessionCreate(name="b1", agent="shell", repo=str(repo), model="my-model",
                              max_cost_usd=1.0)
            )  # fmt: skip
    assert not (shome / "sessions" / "b1").exists()
    no_proxy = SessionService(shome, {"PATH": os.environ["PATH"]})
    with pytest.raises(Exception, match="needs the model proxy"):
        await no_proxy.create(
            SessionCreate(name="b2", agent="shell", repo=str(repo), max_cost_usd=1.0)
        )
