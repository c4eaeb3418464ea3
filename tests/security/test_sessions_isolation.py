"""Session isolation levels with real bubblewrap and real sandboxes: a shell as the agent.

Secrets live in a HOME the test makes (never the real /root): their contents are unique
markers that must never reach the session's terminal, while the same probe run with
isolation ``none`` shows them (so each check can fail).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import anyio
import pytest

from hivecell.sandbox.local.layout import SUPERVISOR_MODULE
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.sessions import blocked, isolation
from hivecell.sessions.service import SessionCreate, SessionService
from tests.server.helpers import serve
from tests.sessions.helpers import make_repo

pytestmark = [pytest.mark.anyio]
SECRETS = {
    ".ssh/id_rsa": "SSH-KEY-MARK",
    ".aws/credentials": "AWS-MARK",
    ".netrc": "NETRC-MARK",
    ".config/gh/hosts.yml": "GH-MARK",
}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
}


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """A HOME with keys and credential files in it."""
    user = tmp_path / "user-home"
    for rel, mark in SECRETS.items():
        (user / rel).parent.mkdir(parents=True, exist_ok=True)
        (user / rel).write_text(mark + "\n")
    return user


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with an untracked .env and a committed key and .pem."""
    path = make_repo(tmp_path / "repo")
    (path / "certs").mkdir()
    (path / "certs" / "server.pem").write_text("PEM-MARK\n")
    (path / "deploy.key").write_text("KEY-MARK\n")
    (path / "readme.txt").write_text("readable\n")
    git = ["git", "-C", str(path)]
    env = os.environ | GIT_ENV
    subprocess.run([*git, "add", "-A"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "files"], check=True, env=env)
    (path / ".env").write_text("ENV-MARK\n")  # untracked: only in the main checkout
    return path


def service(home: Path, user_home: Path) -> SessionService:
    return SessionService(home, {"PATH": os.environ["PATH"], "HOME": str(user_home)})


async def probe(svc: SessionService, name: str, command: str, timeout: float = 60) -> str:
    """Type ``command``, then wait for its end marker (computed, so the echo never matches)."""
    start = (await svc.logs(name, None, 0))[1]
    await svc.send(name, f"{command}; echo END-$((40+2))", True)
    with anyio.fail_after(timeout):
        while True:  # the shell answers when it answers; the scrollback shows what it printed
            data, _ = await svc.logs(name, start, 1 << 22)
            if b"END-42" in data:
                return data.decode(errors="replace")
            await anyio.sleep(0.05)


def leak_probe(user_home: Path, repo: Path) -> str:
    reads = [f"cat {user_home}/{rel}" for rel in SECRETS]
    reads += [f"cat {repo}/.env", f"cat {repo}/deploy.key", "cat certs/server.pem"]
    reads += ["cat leak-link", "ls -a " + str(user_home / ".ssh")]
    return f"ln -s {user_home}/.ssh/id_rsa leak-link; " + "; ".join(reads) + "; cat readme.txt"


def lines(out: str) -> list[str]:
    """The terminal's lines without escape sequences and carriage returns."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in plain.split("\n")]


MARKS = [*SECRETS.values(), "ENV-MARK", "KEY-MARK", "PEM-MARK"]


async def test_without_isolation_the_probe_reads_every_secret(
    shome: Path, fake_home: Path, repo: Path
) -> None:
    """The control: what the isolated sessions must not show is there to be shown."""
    svc = service(shome, fake_home)
    await svc.create(SessionCreate(name="open1", agent="shell", repo=str(repo), isolation="none"))
    out = await probe(svc, "open1", leak_probe(fake_home, repo))
    for mark in MARKS:
        assert mark in out, (mark, out)
    await svc.destroy("open1", force=True)


async def test_worktree_hides_blocked_paths_links_and_the_hivecell_home(
    shome: Path, fake_home: Path, repo: Path
) -> None:
    svc = service(shome, fake_home)
    view = await svc.create(
        SessionCreate(name="wt1", agent="shell", repo=str(repo), isolation="worktree")
    )
    out = await probe(svc, "wt1", leak_probe(fake_home, repo))
    for mark in MARKS:
        assert mark not in out, (mark, out)
    assert "Permission denied" in out
    assert "readable" in out  # the worktree itself is there
    # Neither the server's token nor another session's socket is in its view.
    other = await probe(svc, "wt1", f"cat {shome}/token; ls -a {shome}/sessions/wt1")
    assert "token: No such file" in other
    assert "worktree" in other and "spec.json" not in other and "sock" not in other
    # The agent cannot undo a cover (no capabilities, even as root).
    undo = await probe(svc, "wt1", f"umount {fake_home}/.ssh; cat {fake_home}/.ssh/id_rsa")
    assert "SSH-KEY-MARK" not in undo
    # Its work lands in its own worktree, on its branch.
    await probe(svc, "wt1", "echo from-wt > made.txt && git add made.txt")
    assert (Path(view.cwd) / "made.txt").read_text() == "from-wt\n"
    assert view.branch == "hivecell/wt1"
    await svc.destroy("wt1", force=True)


async def test_sandbox_session_works_in_its_worktree_without_the_host_home(
    shome: Path, fake_home: Path, repo: Path
) -> None:
    svc = service(shome, fake_home)
    view = await svc.create(SessionCreate(name="sb1", agent="shell", repo=str(repo)))
    assert view.isolation == "sandbox"  # the built-in agents' default
    spec = await svc.spec("sb1")
    assert spec.sandbox is not None
    box = shome / "sandboxes" / spec.sandbox
    out = await probe(svc, "sb1", leak_probe(fake_home, repo) + f"; ls {fake_home}; echo $HOME")
    for mark in MARKS:
        assert mark not in out, (mark, out)
    assert "readable" in out and "/home/user" in out
    who = await probe(svc, "sb1", "id -u; hostname; git status --short | wc -l")
    assert lines(who)[1:3] == ["1000", spec.sandbox]  # the box's user and name, not the host's
    # The box lists as running and its use is measured, so capacity and metrics count it.
    provider = LocalProvider(shome)
    assert (await provider.info(spec.sandbox)).status == "running"
    assert (await provider.usage(spec.sandbox)).memory_rss_mb > 0
    # A file written in the box lands in the session's worktree, on its branch.
    await probe(svc, "sb1", "echo from-box > made.txt")
    assert (Path(view.cwd) / "made.txt").read_text() == "from-box\n"
    status = await anyio.run_process(["git", "-C", view.cwd, "status", "--porcelain"])
    assert b"?? made.txt" in status.stdout
    # Destroy removes the box (folder, processes) and keeps the branch.
    gone = await svc.destroy("sb1", force=True)
    assert gone["branch_kept"] == "hivecell/sb1"
    assert not box.exists()
    assert not _processes_naming(box)


async def test_sandbox_agent_reaches_no_host_socket(
    shome: Path, fake_home: Path, repo: Path, tmp_path: Path
) -> None:
    """Hostile: from the box, the server's and other sessions' unix sockets (by path) and
    a host abstract socket are out of reach."""
    svc = service(shome, fake_home)
    await svc.create(SessionCreate(name="peer", agent="shell", repo=str(repo), isolation="none"))
    await svc.create(SessionCreate(name="sb2", agent="shell", repo=str(repo)))
    spec = await svc.spec("sb2")
    host_sock = tmp_path / "host.sock"
    listeners = _listen(host_sock)
    targets = [
        str(shome / "sessions" / "peer" / "sock"),
        str(shome / "sessions" / "sb2" / "sock"),
        str(shome / "sandboxes" / spec.sandbox / "sockets"),  # type: ignore[operator]
        str(host_sock),
        "@" + listeners[1].getsockname()[1:].decode(),
        f"tcp:{listeners[2].getsockname()[1]}",  # the host's loopback (where a server listens)
    ]
    code = (
        "import socket,sys\n"
        "for t in sys.argv[1:]:\n"
        "  tcp=t.startswith('tcp:')\n"
        "  s=socket.socket(socket.AF_INET if tcp else socket.AF_UNIX)\n"
        "  a=('127.0.0.1',int(t[4:])) if tcp else '\\0'+t[1:] if t[0]=='@' else t\n"
        "  try: s.connect(a); print('REACHED', t)\n"
        "  except OSError as e: print('refused', e.errno)\n"
    )
    (Path(spec.cwd) / "reach.py").write_text(code)
    try:
        out = await probe(svc, "sb2", "python3 reach.py " + " ".join(targets))
        # The same probe on the host reaches them (the check can fail).
        peer = await probe(
            svc, "peer", f"python3 {spec.cwd}/reach.py {targets[0]} {targets[3]} {targets[5]}"
        )
    finally:
        for sock in listeners:
            sock.close()
    assert "REACHED" not in out, out
    assert out.count("refused") == len(targets), out
    assert peer.count("REACHED") == 3, peer
    for name in ("peer", "sb2"):
        await svc.destroy(name, force=True)


async def test_sandbox_nat_session_has_a_network_but_not_the_host(
    shome: Path, fake_home: Path, repo: Path, tmp_path: Path
) -> None:
    """``nat``: slirp4netns behind the sandboxes' deny rules, so the host's loopback (where
    the server listens), reached through slirp's host alias or directly, stays refused."""
    svc = service(shome, fake_home)
    view = await svc.create(
        SessionCreate(name="nat1", agent="shell", repo=str(repo), network="nat")
    )
    listeners = _listen(tmp_path / "host.sock")
    code = (
        "import socket,sys\n"
        "for h in ('10.0.2.2','127.0.0.1'):\n"
        "  try: socket.create_connection((h,int(sys.argv[1])),timeout=3); print('REACHED',h)\n"
        "  except OSError as e: print('refused',h)\n"
    )
    (Path(view.cwd) / "tcp.py").write_text(code)
    port = listeners[2].getsockname()[1]
    try:
        out = await probe(svc, "nat1", f"cat /proc/net/dev; python3 tcp.py {port}")
    finally:
        for sock in listeners:
            sock.close()
    assert "tap0" in out, out  # the nat interface (an offline box has lo alone)
    assert "REACHED" not in out and out.count("refused") == 2, out
    await svc.destroy("nat1", force=True)


async def test_sandbox_session_survives_a_server_restart_and_restarts(
    shome: Path, fake_home: Path, repo: Path
) -> None:
    body = {"name": "sb3", "agent": "shell", "repo": str(repo), "isolation": "sandbox"}
    async with serve(shome) as running:
        made = await running.post("/sessions", json=body)
        assert made.status_code == 201, made.text
        first = made.json()
    svc = service(shome, fake_home)
    await probe(svc, "sb3", "export KEPT=still-$((1+1))")
    async with serve(shome) as running:
        again = (await running.get("/sessions/sb3")).json()
        assert again["supervisor"] == "running" and again["pid"] == first["pid"]
        out = await probe(svc, "sb3", "echo $KEPT")  # the same shell, in the same box
        assert "still-2" in out
        restarted = (await running.post("/sessions/sb3/restart")).json()
        assert restarted["restarts"] == 1 and restarted["pid"] != first["pid"]
        out = await probe(svc, "sb3", "echo again-$((2+2)) > again.txt; id -u")
        assert "1000" in lines(out)
        assert (Path(first["cwd"]) / "again.txt").read_text() == "again-4\n"
        gone = await running.client.delete("/api/v1/sessions/sb3", params={"force": "true"})
        assert gone.status_code == 200, gone.text
    assert list((shome / "sandboxes").iterdir()) == []


async def test_sandbox_runs_an_agent_installed_in_a_virtualenv_read_only(
    shome: Path, fake_home: Path, repo: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "tools" / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    tool = venv / "bin" / "mytool"
    tool.write_text(
        "#!/bin/bash\necho TOOL-RAN-$((6*7)) uid=$(id -u) home=$HOME\n"
        'touch "$0.w" 2>/dev/null && echo TOOL-WROTE || echo TOOL-READONLY\nexec bash -i\n'
    )
    tool.chmod(0o755)
    for folder in (tmp_path, tmp_path / "tools"):
        folder.chmod(0o755)
    (shome / "agents").mkdir()
    (shome / "agents" / "mytool.toml").write_text('command = "mytool"\n')
    svc = SessionService(
        shome, {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(fake_home)}
    )
    await svc.create(SessionCreate(name="tool1", agent="custom/mytool", repo=str(repo)))
    out = await probe(svc, "tool1", "echo $PATH")
    assert "TOOL-RAN-42 uid=1000 home=/home/user" in out, out
    assert "TOOL-READONLY" in out and "TOOL-WROTE" not in out
    assert not (venv / "bin" / "mytool.w").exists()
    await svc.destroy("tool1", force=True)


def test_agent_paths_follow_links_and_interpreters(tmp_path: Path) -> None:
    prefix = tmp_path / "npm"
    (prefix / "lib" / "node_modules" / "pkg").mkdir(parents=True)
    (prefix / "bin").mkdir()
    script = prefix / "lib" / "node_modules" / "pkg" / "cli.js"
    script.write_text("#!/usr/bin/env bash\n")
    script.chmod(0o755)
    (prefix / "bin" / "pkg").symlink_to(script)
    binds, bins = isolation.agent_paths("pkg", f"{prefix / 'bin'}:/usr/bin:/bin")
    assert binds == [prefix] and bins == [prefix / "bin"]
    assert isolation.agent_paths("bash", "/usr/bin:/bin") == ([], [])


def test_blocked_find_covers_home_files_patterns_not_tree_links(tmp_path: Path) -> None:
    user = tmp_path / "h"
    (user / ".ssh").mkdir(parents=True)
    (user / ".docker").mkdir()
    (user / ".docker" / "config.json").write_text("{}")
    tree = tmp_path / "t"
    (tree / "a" / "node_modules").mkdir(parents=True)
    for name in (".env.local", "secrets.yaml", "x.key", "ok.txt", "secrets.py"):
        (tree / "a" / name).write_text("s")
    (tree / "a" / "node_modules" / "dep.pem").write_text("s")
    (tree / "lib.pem").symlink_to("/usr/lib/os-release")
    covers = blocked.find(user, [tree])
    assert set(covers.dirs) == {str(user / ".ssh")}
    assert set(covers.files) == {
        str(user / ".docker" / "config.json"),
        *(str(tree / "a" / n) for n in (".env.local", "secrets.yaml", "x.key")),
    }


async def _until(svc: SessionService, name: str, needle: bytes) -> None:
    with anyio.fail_after(30):
        while True:
            data = (await svc.logs(name, 0, 1 << 20))[0]
            if needle in data:
                return
            assert (await svc.get(name)).status != "exited", data
            await anyio.sleep(0.05)


def _listen(host_sock: Path) -> list[socket.socket]:
    """A unix socket anyone may connect to on the host, an abstract one, a loopback port."""
    listeners = [socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX), socket.socket()]
    listeners[0].bind(str(host_sock))
    listeners[1].bind(b"\0hivecell-test-" + str(os.getpid()).encode())
    listeners[2].bind(("127.0.0.1", 0))
    for sock in listeners:
        sock.listen()
    host_sock.chmod(0o777)
    host_sock.parent.chmod(0o755)
    return listeners


def _processes_naming(root: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if SUPERVISOR_MODULE.encode() in cmdline and str(root).encode() in cmdline:
            found.append(int(proc.name))
    return found


async def test_ctrl_c_reaches_the_agent_in_a_sandbox_not_the_box(
    shome: Path, fake_home: Path, repo: Path
) -> None:
    """The agent is the terminal's foreground group: Ctrl-C interrupts it, and the box (whose
    supervisor stops it on SIGINT) carries on."""
    loop = "trap 'echo GOT-INT-$((1+1))' INT; while true; do read -r l && echo \"L:$l:L\"; done"
    (shome / "agents").mkdir()
    (shome / "agents" / "looper.toml").write_text(
        f'command = "bash"\nargs = ["-c", {json.dumps(loop)}]\n'
    )
    svc = service(shome, fake_home)
    view = await svc.create(SessionCreate(name="cc1", agent="custom/looper", repo=str(repo)))
    await svc.send("cc1", "\x03", False)  # early, while the box starts: it must survive
    await svc.send("cc1", "before", True)
    await _until(svc, "cc1", b"L:before:L")
    await svc.send("cc1", "\x03", False)
    await _until(svc, "cc1", b"GOT-INT-2")
    await svc.send("cc1", "after", True)
    await _until(svc, "cc1", b"L:after:L")
    assert (await svc.get("cc1")).pid == view.pid
    await svc.destroy("cc1", force=True)


async def test_sandbox_agent_commits_in_its_own_git_never_the_repositorys(
    shome: Path, fake_home: Path, repo: Path
) -> None:
    """Agents commit as they work: in a box that lands in the box's own git folder (the
    repository's objects borrowed read-only), never in the repository, whose config, hooks,
    refs and objects the box cannot touch; the work still shows in the session's diff."""
    svc = service(shome, fake_home)
    view = await svc.create(SessionCreate(name="sbgit", agent="shell", repo=str(repo)))
    common = repo / ".git"
    objects_before = sorted(p.name for p in (common / "objects").rglob("*"))
    refs_before = (await anyio.run_process(["git", "-C", str(repo), "show-ref"])).stdout
    out = await probe(
        svc,
        "sbgit",
        "echo new > added.txt && git add added.txt && git commit -qm from-the-box"
        " && git --no-pager log --format=box=%s -1"
        " && git --no-pager log --format=main=%s -1 main && git status --short | sed s/^/st=/",
    )
    assert "box=from-the-box" in lines(out) and "main=files" in lines(out)
    # Only the covers of the blocked files differ from the box's last commit.
    assert sorted(x for x in lines(out) if x.startswith("st=")) == [
        "st= M certs/server.pem",
        "st= M deploy.key",
    ]
    # What a hostile agent tries on the repository's git and its own .git and config.
    attacks = [
        f"echo '[core] hooksPath=/tmp' >> {common}/config",
        f"echo evil > {common}/hooks/post-merge",
        f"echo 0000 > {common}/refs/heads/main",
        "echo 'gitdir: /tmp' > .git",
        "git config core.fsmonitor /tmp/evil",
        f"git --git-dir={common} commit -qm sneak --allow-empty",
    ]
    await probe(svc, "sbgit", "; ".join(f"{a} 2>/dev/null || echo refused" for a in attacks))
    assert "hooksPath" not in (common / "config").read_text()
    assert not (common / "hooks" / "post-merge").exists()
    assert (await anyio.run_process(["git", "-C", str(repo), "show-ref"])).stdout == refs_before
    assert sorted(p.name for p in (common / "objects").rglob("*")) == objects_before
    assert (Path(view.cwd) / ".git").read_text().startswith("gitdir: ")  # the host's, intact
    # The host sees the work in the worktree's files: diff shows the file.
    diff = await svc.diff("sbgit")
    assert {"status": "A", "path": "added.txt"} in diff["files"]
    await svc.destroy("sbgit", force=True)
