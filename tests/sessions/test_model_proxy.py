"""The model proxy's server end: real SDKs (openai, anthropic) over the session's unix socket,
real scripted vendor servers behind it. What the agent sends, what the provider receives,
what is counted, and what is refused without reaching the provider."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import anyio
import httpx2
import openai
import pytest

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.script import Reply
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.llm.scripted_claude import ClaudeReply, ScriptedClaudeServer
from hivecell.errors import ConfigError
from hivecell.sessions.audit import AuditLog
from hivecell.sessions.proxy.host import ProxyHost
from hivecell.sessions.proxy.usage import StreamMeter, read_usage
from hivecell.sessions.spec import SessionSpec, write_private

pytestmark = [pytest.mark.anyio]
SECRET = "sk-real-provider-key-0042"
AGENT_KEY = "whatever-the-agent-sends"


def provider(base_url: str, kind: str = "openai-chat") -> ProviderConfig:
    return ProviderConfig(name="test", kind=kind, base_url=base_url, api_key=SECRET, model="m")  # type: ignore[arg-type]


def make_session(home: Path, name: str, max_cost_usd: float | None = None) -> Path:
    folder = home / "sessions" / name
    folder.mkdir(parents=True, mode=0o700)
    spec = SessionSpec(
        name=name,
        agent="shell",
        argv=["true"],
        cwd=str(home),
        env={},
        isolation="none",
        repo=str(home),
        created_at=datetime.now(UTC),
        proxy=True,
        max_cost_usd=max_cost_usd,
    )
    write_private(folder / "spec.json", spec.model_dump_json())
    return folder


@asynccontextmanager
async def hosting(home: Path, llm: ProviderConfig | None) -> AsyncIterator[ProxyHost]:
    def resolve(name: str | None, model: str | None) -> ProviderConfig:
        if llm is None:
            raise ConfigError("no provider: add a [providers.NAME] table", op="test")
        return llm

    host = ProxyHost(home, resolve)
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        yield host
        tg.cancel_scope.cancel()


def sock(folder: Path) -> str:
    return str(folder / "proxy" / "sock")


def openai_client(folder: Path) -> openai.AsyncOpenAI:
    transport = httpx2.AsyncHTTPTransport(uds=sock(folder))
    return openai.AsyncOpenAI(
        base_url="http://proxy/v1",
        api_key=AGENT_KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def audit(folder: Path) -> list[dict[str, object]]:
    return [e.model_dump(mode="json") for e in AuditLog(folder).read(0, 100)]


async def raw(folder: Path, data: bytes) -> bytes:
    """Bytes sent as they are; everything the proxy answers until it closes."""
    with socket.socket(socket.AF_UNIX) as s:
        await anyio.to_thread.run_sync(s.connect, sock(folder))
        try:  # the proxy may answer and hang up before it has all of it
            await anyio.to_thread.run_sync(s.sendall, data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := await anyio.to_thread.run_sync(s.recv, 65536):
                out += chunk
        return out


async def test_chat_call_carries_the_real_key_and_is_counted(shome: Path) -> None:
    folder = make_session(shome, "s1")
    async with (
        ScriptedLLMServer([Reply(text="hello", prompt_tokens=1000, completion_tokens=200)]) as up,
        hosting(shome, provider(up.base_url)),
    ):
        base = up.base_url
        answer = await openai_client(folder).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content == "hello"
    seen = up.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    assert AGENT_KEY not in json.dumps(seen.headers)
    usage = read_usage(folder)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (1, 1000, 200)
    assert usage.cost_usd == pytest.approx((1000 * 2.50 + 200 * 10.00) / 1e6)
    entry = audit(folder)[-1]
    assert entry["action"] == "network_request" and entry["outcome"] == "allowed"
    assert entry["target"] == f"POST {base}/chat/completions"
    assert entry["detail"]["prompt_tokens"] == 1000  # type: ignore[index]
    assert SECRET not in json.dumps(audit(folder))


async def test_streamed_chat_is_relayed_whole_and_its_usage_asked_for(shome: Path) -> None:
    folder = make_session(shome, "s2")
    reply = Reply(text="streamed words here", prompt_tokens=70, completion_tokens=30)
    async with ScriptedLLMServer([reply]) as up, hosting(shome, provider(up.base_url)):
        stream = await openai_client(folder).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "streamed words here"
    assert up.requests[-1].body["stream_options"] == {"include_usage": True}
    usage = read_usage(folder)
    assert (usage.prompt_tokens, usage.completion_tokens) == (70, 30)


async def test_anthropic_messages_get_the_key_as_x_api_key(shome: Path) -> None:
    folder = make_session(shome, "s3")
    reply = ClaudeReply(text="bonjour", input_tokens=400, output_tokens=60,
                        cache_read_input_tokens=100)  # fmt: skip
    async with (
        ScriptedClaudeServer([reply]) as up,
        hosting(shome, provider(up.base_url, "anthropic")),
    ):
        transport = httpx2.AsyncHTTPTransport(uds=sock(folder))
        client = anthropic.AsyncAnthropic(
            base_url="http://proxy", api_key=AGENT_KEY, max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
        )  # fmt: skip
        message = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].text == "bonjour"  # type: ignore[union-attr]
    headers = up.requests[-1].headers
    assert headers["x-api-key"] == SECRET and "authorization" not in headers
    usage = read_usage(folder)
    assert (usage.prompt_tokens, usage.completion_tokens) == (500, 60)


def test_anthropic_stream_usage_spans_two_events() -> None:
    meter = StreamMeter()
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 12,
         "cache_read_input_tokens": 30, "output_tokens": 1}}},
        {"type": "content_block_delta", "delta": {"text": "x"}},
        {"type": "message_delta", "usage": {"output_tokens": 77}},
    ]  # fmt: skip
    data = b"".join(f"event: e\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    for i in range(0, len(data), 7):  # torn anywhere, as TCP may deliver it
        meter.feed(data[i : i + 7])
    usage = meter.usage()
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens) == (
        42,
        77,
        30,
    )


async def test_what_is_not_a_model_call_never_reaches_the_provider(shome: Path) -> None:
    folder = make_session(shome, "s4")
    big = b"x" * (33 * 1024 * 1024)
    async with ScriptedLLMServer([]) as up, hosting(shome, provider(up.base_url)):
        absolute = await raw(
            folder, b"GET http://169.254.169.254/latest HTTP/1.1\r\nhost: a\r\n\r\n"
        )
        garbage = await raw(folder, b"\x16\x03\x01 not http at all\r\n\r\n")
        files = await raw(folder, b"GET /v1/files HTTP/1.1\r\nhost: a\r\n\r\n")
        wrong_kind = await raw(
            folder, b"POST /v1/messages HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}"
        )
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n"
        too_big = await raw(folder, head % len(big) + big)
    assert absolute.startswith(b"HTTP/1.1 400"), absolute
    assert garbage.startswith(b"HTTP/1.1 400"), garbage
    assert files.startswith(b"HTTP/1.1 404"), files
    assert wrong_kind.startswith(b"HTTP/1.1 404") and b"--provider" in wrong_kind
    assert too_big.startswith(b"HTTP/1.1 413"), too_big[:200]
    assert up.requests == []


async def test_a_spent_budget_refuses_before_the_provider_is_asked(shome: Path) -> None:
    folder = make_session(shome, "s5", max_cost_usd=0.001)
    replies = [Reply(text="a", prompt_tokens=1000, completion_tokens=1000)] * 3
    async with ScriptedLLMServer(replies) as up, hosting(shome, provider(up.base_url)):
        client = openai_client(folder)
        ask = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        await client.chat.completions.create(**ask)  # $0.0125: over the budget after it
        refused = openai.PermissionDeniedError
        with pytest.raises(refused, match=re.escape("budget of $0.001 is spent")):
            await client.chat.completions.create(**ask)
        with pytest.raises(refused, match=re.escape('prices."my-local-model"')):
            await client.chat.completions.create(**{**ask, "model": "my-local-model"})
    assert len(up.requests) == 1
    usage = read_usage(folder)
    assert (usage.requests, usage.refused) == (1, 2)
    assert [e["outcome"] for e in audit(folder)] == ["allowed", "blocked", "blocked"]


async def test_concurrent_calls_are_all_counted(shome: Path) -> None:
    folder = make_session(shome, "s6")
    replies = [Reply(text="ok", prompt_tokens=10, completion_tokens=1)] * 20
    async with ScriptedLLMServer(replies) as up, hosting(shome, provider(up.base_url)):
        client = openai_client(folder)

        async def one() -> None:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    usage = read_usage(folder)
    assert (usage.requests, usage.prompt_tokens) == (20, 200)


async def test_no_provider_and_no_upstream_are_named_to_the_agent(shome: Path) -> None:
    folder = make_session(shome, "s7")
    async with hosting(shome, None):
        with pytest.raises(openai.InternalServerError, match=r"providers\.NAME"):
            await openai_client(folder).models.list()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    async with hosting(shome, provider(dead)):
        with pytest.raises(openai.InternalServerError, match="did not answer"):
            await openai_client(folder).models.list()


async def test_a_restarted_server_serves_the_same_socket(shome: Path) -> None:
    folder = make_session(shome, "s8")
    async with ScriptedLLMServer([Reply(text="one"), Reply(text="two")]) as up:
        for expected in ("one", "two"):  # the first host's socket is left behind, stale
            async with hosting(shome, provider(up.base_url)):
                answer = await openai_client(folder).chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                )
            assert answer.choices[0].message.content == expected
    assert (folder / "proxy").stat().st_mode & 0o777 == 0o711


async def test_a_destroyed_session_is_no_longer_served(shome: Path) -> None:
    folder = make_session(shome, "s9")
    async with ScriptedLLMServer([]) as up, hosting(shome, provider(up.base_url)) as host:
        assert "s9" in host._serving
        (folder / "spec.json").unlink()
        await host.reconcile()
        assert "s9" not in host._serving


async def test_an_agent_hanging_up_mid_answer_is_counted_and_ends_the_upstream(
    shome: Path,
) -> None:
    """The agent reads the first words of a streamed answer and hangs up: the proxy closes
    its call to the provider (no generation left running for nobody) and still counts the
    call, which the provider bills."""
    folder = make_session(shome, "hang")
    upstream_closed = anyio.Event()
    delta = {"index": 0, "delta": {"content": "first words"}}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [delta]}
    first = b"data: %s\n\n" % json.dumps(chunk).encode()

    async def provider_that_streams_forever(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await conn.receive()
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += await conn.receive()
            await conn.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(first), first)
            )
            try:
                while await conn.receive():  # the rest of the answer never comes
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                upstream_closed.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, provider_that_streams_forever)
        async with hosting(shome, provider(f"http://127.0.0.1:{port}/v1")):
            body = json.dumps(
                {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            request = (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            with socket.socket(socket.AF_UNIX) as s:
                await anyio.to_thread.run_sync(s.connect, sock(folder))
                await anyio.to_thread.run_sync(s.sendall, request)
                seen = b""
                with anyio.fail_after(20):
                    while b"first words" not in seen:
                        seen += await anyio.to_thread.run_sync(s.recv, 65536)
            # The agent is gone: the provider's connection ends and the call is on record.
            with anyio.fail_after(20):
                await upstream_closed.wait()
                while read_usage(folder).requests < 1:  # noqa: ASYNC110 - a file, no event
                    await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    calls = [e for e in audit(folder) if e["action"] == "network_request"]
    assert len(calls) == 1 and calls[0]["target"].endswith("/v1/chat/completions")


def proxy_listeners() -> int:
    """How many listening proxy sockets this process holds, reachable or not (the host binds
    through /proc/self/fd/N/sock, the name the kernel keeps)."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    listening = 0x10000  # __SO_ACCEPTCON
    count = 0
    for row in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = row.split()
        if len(fields) == 8 and fields[6] in mine and int(fields[3], 16) & listening:
            count += bool(re.fullmatch(r"/proc/self/fd/\d+/sock", fields[7]))
    return count


async def test_a_session_ensured_from_two_places_at_once_is_served_once(shome: Path) -> None:
    """A session's creation ensures its socket while the reconcile loop may find the same
    folder: both bound the path, and the loser's 'address in use' ended the server (or the
    winner's socket was unlinked from under it and served nobody)."""
    async with (
        ScriptedLLMServer([Reply(text="once")]) as up,
        hosting(shome, provider(up.base_url)) as host,
    ):
        folder = make_session(shome, "s10")
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(host.ensure, "s10")
                tg.start_soon(host.reconcile)
        assert proxy_listeners() == 1
        answer = await openai_client(folder).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "once"


async def test_a_session_whose_socket_cannot_be_made_does_not_stop_the_others(
    shome: Path,
) -> None:
    bad = make_session(shome, "s11")
    (bad / "proxy").mkdir(mode=0o711)
    (bad / "proxy" / "sock").write_text("not a socket")  # refused: "move it away"
    good = make_session(shome, "s12")
    async with (
        ScriptedLLMServer([Reply(text="fine")]) as up,
        hosting(shome, provider(up.base_url)) as host,
    ):
        assert set(host._serving) == {"s12"}
        answer = await openai_client(good).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "fine"
