"""What the server does with sessions. Stateless on purpose: everything lives in the
session folders and the supervisors, so a restarted server simply finds them again.

Layout: ``HOME/sessions/NAME/`` (0700) holds ``spec.json``, ``scrollback.log``, the
supervisor's socket ``sock`` and log, and for worktree and sandbox isolation ``worktree/``
(a sandbox session's box lives under ``HOME/sandboxes``, named in ``spec.json``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.llm.pricing import require_price
from hivecell.errors import HivecellError, InvalidParams, NotFound, SandboxNotFound
from hivecell.sessions import framing, gitops, isolation, worktree
from hivecell.sessions.audit import AuditEntry, AuditLog
from hivecell.sessions.framing import FrameType
from hivecell.sessions.link import Link, SupervisorGone
from hivecell.sessions.names import check_name
from hivecell.sessions.plugins import Isolation, get_agent, load_agents
from hivecell.sessions.proxy.gate import GatePlan
from hivecell.sessions.proxy.host import ProxyHost, socket_dir
from hivecell.sessions.proxy.usage import SessionUsage, read_usage
from hivecell.sessions.scrollback import read_base, read_range
from hivecell.sessions.settings import load_settings
from hivecell.sessions.spec import (
    SCROLLBACK,
    SPEC_FILE,
    SUPERVISOR_LOG,
    WORKTREE,
    SessionSpec,
    read_spec,
    write_private,
)

READY_TIMEOUT = 20.0
Entries = list[AuditEntry]  # (``list`` is a method name below)
# What the agent inherits from the server's environment; nothing else (no API keys).
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SHELL")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    agent: str = Field(max_length=200)
    repo: str = Field(max_length=4096)
    isolation: Isolation | None = None
    network: Literal["offline", "nat"] | None = None  # sandbox isolation; agent's default
    model: str | None = Field(None, max_length=200)
    provider: str | None = Field(None, max_length=200)  # the model proxy's [providers.NAME]
    max_cost_usd: float | None = Field(None, gt=0)  # the model proxy refuses calls past it
    auto_answer: bool = False  # accept routine confirmations, each one audited
    cols: int = Field(120, ge=1, le=framing.MAX_CELLS)
    rows: int = Field(40, ge=1, le=framing.MAX_CELLS)


class SessionView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    agent: str
    isolation: Isolation
    repo: str
    branch: str | None
    cwd: str
    status: Literal["working", "waiting", "idle", "exited"]
    pid: int | None
    supervisor_pid: int | None
    exit_code: int | None
    restarts: int
    cols: int
    rows: int
    scrollback_bytes: int
    supervisor: Literal["running", "gone"]
    created_at: datetime
    audit: list[AuditEntry] | None = None  # the newest entries, in GET /sessions/{name}
    proxy: bool = False
    usage: SessionUsage | None = None  # model calls through the proxy
    auto_answer: bool = False


class SessionService:
    def __init__(self, home: Path, environ: dict[str, str], proxy: ProxyHost | None = None) -> None:
        self.home = home
        self.root = home / "sessions"
        self.agents_dir = home / "agents"
        self.environ = environ
        self.proxy = proxy  # the model proxy, when a server runs one

    def folder(self, name: str) -> Path:
        return self.root / check_name(name)

    # -- create -------------------------------------------------------------------------
    async def create(self, req: SessionCreate) -> SessionView:
        name = check_name(req.name)
        agents = await anyio.to_thread.run_sync(load_agents, self.agents_dir)
        agent = get_agent(agents, req.agent)
        level = req.isolation or agent.defaults.isolation
        repo = Path(req.repo)
        if not repo.is_absolute() or not await anyio.Path(repo).is_dir():
            raise InvalidParams(
                f"--repo {req.repo!r} must be an existing folder, as an absolute path",
                op="session_create",
            )
        argv = agent.argv(req.model)
        proxied = self.proxy is not None and bool(agent.model_env)
        await self._check_model(req, proxied)
        settings = await anyio.to_thread.run_sync(load_settings, self.home)
        folder = await anyio.to_thread.run_sync(self._make_folder, name)
        gate = GatePlan(socket_dir(folder), agent.model_env) if proxied else None
        box: str | None = None
        try:
            branch, cwd, base = None, repo, None
            if level != "none":
                repo = await worktree.repo_root(repo)
                cwd = folder / WORKTREE
                branch = await worktree.add(repo, name, cwd)
                base = await worktree.head(cwd)
            env = self._env(name, agent.environment(req.model))
            if level == "worktree":
                argv = await isolation.worktree_argv(
                    folder,
                    argv,
                    cwd,
                    home=self._host_home(),
                    repo=repo,
                    hivecell_home=self.home,
                    gate=gate,
                )
            elif level == "sandbox":
                assert branch is not None
                plan = await isolation.sandbox_plan(
                    folder,
                    argv,
                    cwd,
                    env,
                    branch=branch,
                    hivecell_home=self.home,
                    network=req.network or agent.defaults.network,
                    memory_mb=agent.defaults.memory_mb,
                    host_path=env["PATH"],
                    gate=gate,
                )
                box, argv, env = plan.sandbox_id, plan.argv, plan.env
            elif gate is not None:
                argv = gate.wrap(sys.executable, argv)
            spec = SessionSpec(
                name=name,
                agent=agent.id,
                argv=argv,
                cwd=str(cwd),
                env=env,
                cols=req.cols,
                rows=req.rows,
                isolation=level,
                repo=str(repo),
                branch=branch,
                sandbox=box,
                hooks=agent.hooks,
                screen=agent.screen,
                created_at=datetime.now(UTC),
                base=base,
                scrollback_max_bytes=settings.scrollback_max_bytes,
                audit_max_bytes=settings.audit_max_bytes,
                proxy=gate is not None,
                provider=req.provider,
                max_cost_usd=req.max_cost_usd,
                auto_answer=req.auto_answer,
            )
            await anyio.to_thread.run_sync(
                write_private, folder / SPEC_FILE, spec.model_dump_json(indent=2)
            )
            if self.proxy is not None and gate is not None:
                await self.proxy.ensure(name)  # listening before the agent's first call
            await self._start_supervisor(folder)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if self.proxy is not None:
                    await self.proxy.close(name)
                await self._undo(folder, repo if level != "none" else None, box)
            raise
        return await self.get(name)

    async def _check_model(self, req: SessionCreate, proxied: bool) -> None:
        """A named provider must exist and a budget must be countable, before anything is made."""
        if req.max_cost_usd is not None and not proxied:
            raise InvalidParams(
                "--max-cost needs the model proxy: create the session through the server "
                "(hivecell up), with an agent whose model_env is not empty",
                op="session_create",
            )
        if self.proxy is None or (req.provider is None and req.max_cost_usd is None):
            return
        resolve = self.proxy.resolve
        llm = await anyio.to_thread.run_sync(resolve, req.provider, req.model)
        if req.max_cost_usd is not None and req.model:
            require_price(req.model, llm.prices, op="session_create")

    def _make_folder(self, name: str) -> Path:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidParams(f"{self.root} is not a folder: move it away", op="session_create")
        folder = self.root / name
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            raise InvalidParams(
                f"a session named {name!r} exists: pick another name or destroy it first",
                op="session_create",
                context={"name": name},
            ) from None
        return folder

    def _env(self, name: str, extra: dict[str, str]) -> dict[str, str]:
        env = {k: self.environ[k] for k in PASSED_ENV if k in self.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("LANG", "C.UTF-8")
        return env | {"TERM": "xterm-256color", "HIVECELL_SESSION": name} | extra

    async def _start_supervisor(self, folder: Path) -> None:
        log = os.open(folder / SUPERVISOR_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # Its own session (a server stopped with Ctrl-C must not take it along); it
            # forks once more and its first process exits, so no server reaps it.
            process = await anyio.open_process(
                [sys.executable, "-m", "hivecell.sessions.supervisor", str(folder)],
                stdin=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                env=self._supervisor_env(),
            )
        finally:
            os.close(log)
        async with process:
            assert process.stdout is not None
            seen = b""
            with anyio.move_on_after(READY_TIMEOUT):
                async for chunk in process.stdout:
                    seen += chunk
                    if b"\n" in seen:
                        break
        if not seen.startswith(b"ready"):
            detail = await anyio.Path(folder / SUPERVISOR_LOG).read_text(errors="replace")
            raise HivecellError(
                f"the session's supervisor did not start: {detail.strip()[-500:]}",
                op="session_create",
            )

    def _host_home(self) -> Path | None:
        home = self.environ.get("HOME")
        return Path(home) if home and Path(home).is_absolute() else None

    def _supervisor_env(self) -> dict[str, str]:
        # Only what Python needs to find hivecell: the agent's own env is in spec.json.
        keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "HOME", "LANG")
        return {k: self.environ[k] for k in keep if k in self.environ}

    async def _undo(self, folder: Path, repo: Path | None, box: str | None) -> None:
        if box is not None:
            with contextlib.suppress(HivecellError):
                await isolation.destroy_box(self.home, box)
        if repo is not None and await anyio.Path(folder / WORKTREE).exists():
            with contextlib.suppress(HivecellError):
                await worktree.remove(repo, folder / WORKTREE, force=True)
        await anyio.to_thread.run_sync(shutil.rmtree, folder, True)

    # -- read ---------------------------------------------------------------------------
    async def names(self) -> list[str]:
        if not await anyio.Path(self.root).is_dir():
            return []
        return sorted([p.name async for p in anyio.Path(self.root).iterdir() if await p.is_dir()])

    async def list(self) -> list[SessionView]:
        views = []
        for name in await self.names():
            try:
                views.append(await self.get(name))
            except NotFound:
                continue  # destroyed meanwhile, or a half-made folder
        return views

    async def spec(self, name: str) -> SessionSpec:
        folder = self.folder(name)
        try:
            return await anyio.to_thread.run_sync(read_spec, folder)
        except (FileNotFoundError, NotADirectoryError, ValueError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(
                exc, FileNotFoundError | NotADirectoryError
            ):
                raise InvalidParams(
                    f"session {name!r} cannot be read ({exc.strerror}): its spec.json is not a "
                    "plain file; destroy the session folder by hand",
                    op="session",
                    context={"name": name},
                ) from None
            raise NotFound(
                f"no session named {name!r}: see hivecell session ls",
                op="session",
                context={"name": name},
            ) from None

    async def get(self, name: str) -> SessionView:
        spec = await self.spec(name)
        base = {
            "name": spec.name,
            "agent": spec.agent,
            "isolation": spec.isolation,
            "repo": spec.repo,
            "branch": spec.branch,
            "cwd": spec.cwd,
            "created_at": spec.created_at,
            "proxy": spec.proxy,
            "auto_answer": spec.auto_answer,
            "usage": await self._usage(name, spec) if spec.proxy else None,
        }
        try:
            status = await self._ask(name, {"op": "status"})
        except SupervisorGone:
            size = await self._scrollback_size(name)
            return SessionView(
                **base,
                status="exited",
                pid=None,
                supervisor_pid=None,
                exit_code=None,
                restarts=0,
                cols=spec.cols,
                rows=spec.rows,
                scrollback_bytes=size,
                supervisor="gone",
            )
        return SessionView(
            **base,
            **status.model_dump(exclude={"op"}),
            supervisor="running",
        )

    async def _usage(self, name: str, spec: SessionSpec) -> SessionUsage:
        usage = await anyio.to_thread.run_sync(read_usage, self.folder(name))
        return usage.model_copy(update={"max_cost_usd": spec.max_cost_usd})

    async def _scrollback_size(self, name: str) -> int:
        try:
            size = (await anyio.Path(self.folder(name) / SCROLLBACK).stat()).st_size
            return size + await anyio.to_thread.run_sync(read_base, self.folder(name))
        except FileNotFoundError:
            return 0

    async def _ask(self, name: str, message: dict[str, Any]) -> Any:
        link = await Link.open(self.folder(name))
        try:
            return await link.request(message)
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            raise SupervisorGone(
                "the session's supervisor went away mid-request", op="session"
            ) from None
        finally:
            await link.aclose()

    async def logs(self, name: str, offset: int | None, tail: int) -> tuple[bytes, int]:
        """Scrollback bytes from ``offset`` (or the last ``tail``), and the offset after."""
        await self.spec(name)
        return await anyio.to_thread.run_sync(read_range, self.folder(name), offset, tail)

    async def audit(self, name: str, after: int, limit: int) -> Entries:
        """Audit entries with ``seq > after``, oldest first."""
        spec = await self.spec(name)
        log = AuditLog(self.folder(name), max_bytes=spec.audit_max_bytes)
        return await anyio.to_thread.run_sync(log.read, after, limit)

    async def audit_tail(self, name: str, count: int) -> Entries:
        spec = await self.spec(name)
        log = AuditLog(self.folder(name), max_bytes=spec.audit_max_bytes)
        return await anyio.to_thread.run_sync(log.tail, count)

    # -- the session's work -------------------------------------------------------------
    async def diff(self, name: str) -> dict[str, Any]:
        return await gitops.diff(await self.spec(name), self.environ)

    async def merge(
        self, name: str, *, into: str | None, commit: bool, message: str | None
    ) -> dict[str, Any]:
        spec = await self.spec(name)
        result = await gitops.merge(spec, self.environ, into=into, commit=commit, message=message)
        log = AuditLog(self.folder(name), max_bytes=spec.audit_max_bytes)
        await anyio.to_thread.run_sync(
            functools.partial(
                log.append,
                session=spec.name,
                agent=spec.agent,
                action="merge",
                target=result["into"],
                detail={"commit": result["merge_commit"], "committed": result["committed"]},
            )
        )
        return result

    # -- act ----------------------------------------------------------------------------
    async def send(self, name: str, text: str, enter: bool) -> None:
        await self.spec(name)
        data = text.encode("utf-8") + (b"\r" if enter else b"")
        link = await Link.open(self.folder(name))
        try:
            for start in range(0, len(data), framing.MAX_PAYLOAD):
                await link.send(
                    framing.encode(FrameType.STDIN, data[start : start + framing.MAX_PAYLOAD])
                )
            await link.request({"op": "status"})  # answered after the input was handed over
        finally:
            await link.aclose()

    async def restart(self, name: str) -> SessionView:
        spec = await self.spec(name)
        try:
            await self._ask(name, {"op": "restart"})
        except SupervisorGone:  # the supervisor itself died: start a new one
            await self._start_supervisor(self.folder(spec.name))
        return await self.get(name)

    async def destroy(self, name: str, *, force: bool) -> dict[str, Any]:
        spec = await self.spec(name)
        folder = self.folder(name)
        if spec.branch and await anyio.Path(folder / WORKTREE).exists():
            await self._check_clean(spec, force)
        with contextlib.suppress(SupervisorGone):
            stopped = await self._ask(name, {"op": "stop"})
            await _gone(stopped.supervisor_pid)  # it removes its socket as it ends
        if self.proxy is not None:
            await self.proxy.close(name)
        if spec.sandbox is not None:  # its supervisor ended with the agent: the box is idle
            with contextlib.suppress(SandboxNotFound):
                await isolation.destroy_box(self.home, spec.sandbox)
        if spec.branch and await anyio.Path(folder / WORKTREE).exists():
            await worktree.remove(Path(spec.repo), folder / WORKTREE, force=True)
        await anyio.to_thread.run_sync(_remove_tree, folder)
        kept = f"branch {spec.branch} kept (its commits stay in {spec.repo})" if spec.branch else ""
        return {"name": name, "destroyed": True, "branch_kept": spec.branch, "message": kept}

    async def _check_clean(self, spec: SessionSpec, force: bool) -> None:
        """Refuse to drop uncommitted work unless ``force`` (checked before the agent stops)."""
        if force:
            return
        changes = await worktree.status(Path(spec.cwd))
        if changes:
            raise gitops.MergeRefused(
                f"session {spec.name} has uncommitted changes in its worktree "
                f"({len(changes.splitlines())} files): commit them on {spec.branch} "
                "(session merge --commit, or by hand) or destroy with --force "
                "(API: force=true)",
                op="session_destroy",
                context={"name": spec.name},
            )


async def _gone(pid: int, timeout: float = 10) -> None:
    """Until process ``pid`` has ended (a zombie counts: it has), at most ``timeout``."""
    with anyio.move_on_after(timeout):
        while True:  # not our child (it forked away): no wait(2), so look at /proc
            try:
                stat_line = await anyio.Path(f"/proc/{pid}/stat").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                return
            if stat_line.rsplit(b")", 1)[1].split()[0] == b"Z":
                return
            await anyio.sleep(0.02)


def _remove_tree(folder: Path) -> None:
    """``rmtree`` that does not mind an entry vanishing under it (a late socket unlink)."""

    def ignore_missing(func: Any, path: str, info: Any) -> None:
        if not isinstance(info[1], FileNotFoundError):
            raise info[1]

    shutil.rmtree(folder, onerror=ignore_missing)
