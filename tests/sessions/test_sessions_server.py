"""Sessions through the real server, the real CLI and real PTYs: a bash shell as the agent."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import websockets

from hivecell.errors import InvalidParams
from hivecell.sessions import framing
from hivecell.sessions.framing import FrameType
from hivecell.sessions.names import check_name
from hivecell.sessions.service import SessionService
from tests.server.helpers import serve
from tests.sessions.helpers import cli, make_repo, viewer, wait_status

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


async def test_shell_session_create_send_logs_attach_restart_server_destroy(
    shome: Path, repo: Path
) -> None:
    service = SessionService(shome, {})
    async with serve(shome) as running:
        done = await cli(
            shome,
            running,
            "create",
            "sh1",
            "--agent",
            "shell",
            "--repo",
            str(repo),
            "--isolation",
            "none",
        )
        assert b"session sh1 started" in done.stdout
        await cli(shome, running, "send", "sh1", "echo hi-$((6*7))")
        with anyio.fail_after(30):
            while True:  # the shell answers when it answers; logs show what it printed
                if b"hi-42" in (await cli(shome, running, "logs", "sh1")).stdout:
                    break
                await anyio.sleep(0.1)
        listed = json.loads((await cli(shome, running, "ls", "--json")).stdout)
        assert [(s["name"], s["agent"], s["supervisor"]) for s in listed] == [
            ("sh1", "shell", "running")
        ]
        assert listed[0]["status"] in ("working", "idle")
        agent_pid = listed[0]["pid"]

        async with viewer(running, "sh1") as one, viewer(running, "sh1") as two:
            await one.until(b"hi-42")  # the scrollback replays on attach
            await two.until(b"hi-42")
            await one.type("echo typed-$((1+1))\r")
            await one.until(b"typed-2")
            await two.until(b"typed-2")  # the second viewer sees what the first typed
            await one.ws.send(framing.resize(101, 33))
            await two.type("stty size\r")
            await two.until(b"33 101")

    # The server is gone; the session is not. A new server finds it, scrollback and all.
    async with serve(shome) as running:
        view = (await running.get("/sessions/sh1")).json()
        assert view["supervisor"] == "running" and view["pid"] == agent_pid
        logs = await running.get("/sessions/sh1/logs")
        assert b"hi-42" in logs.content and b"typed-2" in logs.content
        async with viewer(running, "sh1", "?tail=0") as three:
            await cli(shome, running, "send", "sh1", "echo after-$((2*5))")
            await three.until(b"after-10")

        done = await cli(shome, running, "destroy", "sh1")
        assert b"session sh1 destroyed" in done.stdout
        assert (await running.get("/sessions")).json()["items"] == []
        assert not (shome / "sessions" / "sh1").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(agent_pid, 0)
    assert service.root.is_dir()


async def test_worktree_isolation_branch_is_made_and_kept(shome: Path, repo: Path) -> None:
    async with serve(shome) as running:
        made = await running.post(
            "/sessions",
            json={"name": "wt1", "agent": "shell", "repo": str(repo), "isolation": "worktree"},
        )
        assert made.status_code == 201, made.text
        view = made.json()
        assert view["branch"] == "hivecell/wt1"
        assert view["cwd"] == str(shome / "sessions" / "wt1" / "worktree")
        async with viewer(running, "wt1") as v:
            git = "git -c user.name=t -c user.email=t@example.org"
            await v.type(
                f"echo work > f.txt; {git} add f.txt; {git} commit -qm w; echo ok-$((3+4))\r"
            )
            await v.until(b"ok-7")
            await v.type("echo dirt > dirty.txt; echo ok-$((4+4))\r")
            await v.until(b"ok-8")
        refused = await running.client.delete("/api/v1/sessions/wt1")
        assert refused.status_code == 409 and "--force" in refused.json()["error"]["message"]
        done = await cli(shome, running, "destroy", "wt1", "--force")
        assert b"branch hivecell/wt1 kept" in done.stdout
    branches = await anyio.run_process(
        ["git", "-C", str(repo), "log", "--format=%s", "hivecell/wt1"]
    )
    assert branches.stdout.decode().splitlines()[0] == "w"  # the session's commit survives it
    again = await anyio.run_process(["git", "-C", str(repo), "worktree", "list"])
    assert b"wt1" not in again.stdout


BAD_NAMES = ["../x", "x/../../y", "a" * 41, "\u0455hell", "She11", "-x", "x-", "", ".", "a b"]
BAD_NAMES += ["sh1\n", "\uff53\uff48", "x\u200by", "x\x00y"]


async def test_bad_names_are_refused_clearly(shome: Path, repo: Path) -> None:
    # What a traversing name would reach; the shared /tmp may hold an x of someone else's.
    outside = [shome / "x", shome / "y", shome.parent / "x", shome.parent / "y"]
    before = {path: path.exists() for path in outside}
    async with serve(shome) as running:
        for name in BAD_NAMES:
            body = {"name": name, "agent": "shell", "repo": str(repo), "isolation": "none"}
            bad = await running.post("/sessions", json=body)
            assert bad.status_code == 422, (name, bad.text)
            assert "session name" in bad.json()["error"]["message"], name
            # Every other route checks the name too before touching a path.
            logs = await running.get(f"/sessions/{quote(name, safe='')}/logs")
            assert logs.status_code in (404, 422), (name, logs.text)
        for body, why in [
            ({"agent": "shell", "repo": "/"}, "not a git repository"),  # sandbox, the default
            ({"agent": "nope", "isolation": "none"}, "no agent 'nope'"),
            ({"agent": "aider", "isolation": "none"}, "--model"),
            ({"agent": "shell", "isolation": "none", "repo": "rel/path"}, "absolute path"),
            ({"agent": "shell", "isolation": "worktree", "repo": "/"}, "not a git repository"),
        ]:
            bad = await running.post("/sessions", json={"name": "ok1", "repo": str(repo)} | body)
            assert bad.status_code == 422, (body, bad.text)
            assert why in bad.json()["error"]["message"], (body, bad.text)
    assert not (shome / "sessions").exists() or list((shome / "sessions").iterdir()) == []
    assert {path: path.exists() for path in outside} == before


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(InvalidParams, match="session name"):
        check_name(name)


async def test_a_killed_supervisor_is_reported_exited_and_can_be_destroyed(
    shome: Path, repo: Path
) -> None:
    async with serve(shome) as running:
        made = await running.post(
            "/sessions",
            json={"name": "k1", "agent": "shell", "repo": str(repo), "isolation": "none"},
        )
        assert made.status_code == 201, made.text
        supervisor = made.json()["supervisor_pid"]
        os.kill(supervisor, signal.SIGKILL)
        with anyio.fail_after(10):  # answers promptly: no hang on a dead socket
            view = (await running.get("/sessions/k1")).json()
        assert (view["status"], view["supervisor"]) == ("exited", "gone")
        listed = json.loads((await cli(shome, running, "ls", "--json")).stdout)
        assert listed[0]["status"] == "exited"
        sent = await running.post("/sessions/k1/send", json={"text": "echo x"})
        assert sent.status_code == 409, sent.text
        assert "restart or destroy" in sent.json()["error"]["message"]
        # Restart starts a new supervisor (and agent) for the same session.
        again = (await running.post("/sessions/k1/restart")).json()
        assert again["supervisor"] == "running" and again["supervisor_pid"] != supervisor
        async with viewer(running, "k1") as v:
            await v.type("echo back-$((2*21))\r")
            await v.until(b"back-42")
        assert (await running.client.delete("/api/v1/sessions/k1")).status_code == 200


async def test_status_waiting_then_exited_with_code(shome: Path, repo: Path) -> None:
    service = SessionService(shome, {})
    async with serve(shome) as running:
        made = await running.post(
            "/sessions",
            json={"name": "st1", "agent": "shell", "repo": str(repo), "isolation": "none"},
        )
        assert made.status_code == 201, made.text
        await running.post("/sessions/st1/send", json={"text": "read -p 'go on? (y/n) ' x"})
        await wait_status(service, "st1", "waiting")
        await running.post("/sessions/st1/send", json={"text": "y"})
        await wait_status(service, "st1", "idle")
        await running.post("/sessions/st1/send", json={"text": "exit 3"})
        view = await wait_status(service, "st1", "exited")
        assert view["exit_code"] == 3 and view["supervisor"] == "running"
        restarted = (await running.post("/sessions/st1/restart")).json()
        assert restarted["status"] != "exited" and restarted["restarts"] == 1


async def test_attach_rejects_malformed_frames_and_the_session_survives(
    shome: Path, repo: Path
) -> None:
    async with serve(shome) as running:
        made = await running.post(
            "/sessions",
            json={"name": "fz1", "agent": "shell", "repo": str(repo), "isolation": "none"},
        )
        assert made.status_code == 201, made.text
        bad_frames = [
            b"\x01",
            framing.HEADER.pack(9, 0, 0),
            framing.HEADER.pack(5, 0, 0xFFFFFF) + b"x",
            framing.HEADER.pack(5, 7, 1) + b"x",  # agent 7: there is one agent
            framing.encode(FrameType.STDOUT, b"spoof"),
            framing.control({"op": "stop"}),  # viewers may not stop the session
        ]
        for bad in bad_frames:
            async with viewer(running, "fz1") as v:
                await v.ws.send(bad)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await v.ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
        view = (await running.get("/sessions/fz1")).json()
        assert view["supervisor"] == "running" and view["status"] != "exited"
        unknown = await running.get("/sessions/nope")
        assert unknown.status_code == 404
        token_less = running.base_url.replace("http://", "ws://") + "/api/v1/sessions/fz1/attach"
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(token_less):
                pass
        # A page on another origin cannot ride the cookie into a terminal.
        headers = {"Authorization": f"Bearer {running.token}"}
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(
                token_less, additional_headers=headers, origin="http://evil.example"
            ):
                pass
        assert refused.value.response.status_code == 403


async def test_cli_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    done = await anyio.run_process(
        [sys.executable, "-m", "hivecell.cli.main", "session", "ls", "--home", str(tmp_path)],
        check=False,
    )
    assert done.returncode == 2
    assert b"hivecell up" in done.stderr and b"--server" in done.stderr


async def test_a_preset_starts_its_agents_on_their_branches_with_instructions(
    shome: Path, repo: Path
) -> None:
    (shome / "presets").mkdir()
    (shome / "presets" / "duo.toml").write_text(
        '[[agents]]\nname = "api"\nagent = "shell"\ninstructions = "echo api-$((1+1))"\n'
        '[[agents]]\nname = "web"\nagent = "shell"\ninstructions = "echo web-$((2+2))"\n'
    )
    async with serve(shome) as running:
        done = await cli(
            shome,
            running,
            "create",
            "team",
            "--preset",
            "duo",
            "--repo",
            str(repo),
            "--isolation",
            "worktree",
        )
        assert b"session team-api started" in done.stdout
        assert b"session team-web started" in done.stdout
        views = {s["name"]: s for s in (await running.get("/sessions")).json()["items"]}
        assert {n: v["branch"] for n, v in views.items()} == {
            "team-api": "hivecell/team-api",
            "team-web": "hivecell/team-web",
        }
        for name, needle in (("team-api", b"api-2"), ("team-web", b"web-4")):
            async with viewer(running, name) as v:
                await v.until(needle)
        bad = await cli(
            shome, running, "create", "x", "--preset", "nope", "--repo", str(repo), check=False
        )
        assert bad.returncode == 2 and b"no preset" in bad.stderr
        both = await cli(shome, running, "create", "x", "--repo", str(repo), check=False)
        assert both.returncode == 2 and b"--agent ID or --preset P" in both.stderr
        for name in views:
            await cli(shome, running, "destroy", name)
