"""Turning a ``POST /tasks`` body (JSON or multipart) into a queued task.

Multipart sends the same fields as form fields (``disabled_tools``, ``network_allow`` and
``approve_tools`` repeated, or comma / whitespace separated) plus any number of ``files``,
saved under ``$HIVECELL_HOME/inputs/<task-id>/`` and copied to the sandbox's ``/shared/inbox``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import FormData, UploadFile

from hivecell.agent.llm import ProviderConfig, load_provider, make_model, require_price
from hivecell.agent.runner import RunSettings
from hivecell.agent.service import TaskRequest, TaskService
from hivecell.crew.local import SANDBOX_PREFIX as CREW_PREFIX
from hivecell.errors import HivecellError, InvalidParams, SandboxNotFound, TooLarge
from hivecell.pool.warm import NAME_PREFIX as POOL_PREFIX
from hivecell.protocol.jsonrpc import describe_validation
from hivecell.sandbox import netpolicy
from hivecell.sandbox.base import Desktop, ProviderName
from hivecell.server.app import ServerState
from hivecell.server.errors import Conflict
from hivecell.server.manager import SANDBOX_PREFIX
from hivecell.store import RETRYABLE_STATUSES, TaskRecord

_CHUNK = 1024 * 1024
_FILE_NAME = re.compile(r"^[^/\\\x00]{1,255}$")


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1, max_length=50_000)
    provider: str | None = Field(None, description="a [providers.NAME] in config.toml")
    model: str | None = None
    max_steps: int | None = Field(None, ge=1, le=10_000)
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    max_cost_usd: float | None = Field(
        None, gt=0, description="cost budget in USD (needs the model's price); absent: Settings"
    )
    max_tokens: int | None = Field(None, ge=1, description="token budget; absent: Settings")
    network: Literal["offline", "nat"] | None = None
    network_allow: list[str] = Field(
        default_factory=list,
        description="domains (example.org), wildcards (*.example.org) and CIDRs "
        "(198.51.100.0/24) the sandbox may reach; implies network nat. Empty: the public "
        "internet (private ranges stay refused unless a CIDR here names them)",
    )
    disabled_tools: list[str] = Field(default_factory=list)
    tool_domains: list[str] | None = Field(
        None, description="tool domains offered to the model (docs/tools.md); absent: default"
    )
    approve_tools: list[str] | None = Field(
        None,
        description="tools that wait for approval (write_file: only onto an existing file; "
        "run_shell: only destructive commands); absent: the Settings default policy",
    )
    inbox_writable: bool = Field(False, description="/shared/inbox writable inside the sandbox")
    desktop: Desktop | None = Field(
        None, description="full (panel, file manager) or minimal (openbox); absent: Settings"
    )
    observe_tree: bool = Field(
        False, description="the model sees the accessibility tree beside each screenshot"
    )
    sandbox_id: str | None = Field(
        None,
        max_length=64,
        description="run in this running sandbox (one a person made; it stays afterwards); "
        "absent: a warm or new sandbox of its own",
    )
    sandbox_provider: ProviderName | None = Field(
        None, description="a new sandbox's provider: local (default) or qemu (a VM)"
    )

    @field_validator("network_allow")
    @classmethod
    def _allow_entries(cls, entries: list[str]) -> list[str]:
        return netpolicy.normalize(entries)


async def create_task(request: Request, state: ServerState) -> TaskRecord:
    """Every field and every file is checked before the record exists: a rejected request
    leaves no record, no inputs folder and nothing queued."""
    fields, uploads = await read_body(request)
    body = _validate(fields)
    task_request = build_task_request(body, state)  # the caller's input is checked first
    if body.sandbox_id is not None:
        await _check_chosen(state, body.sandbox_id)
    llm = await anyio.to_thread.run_sync(resolve_llm, state, body, task_request.settings)
    inputs = state.config.home / "inputs"
    names = [file_name(upload) for upload in uploads]
    staging = await stage_uploads(inputs, names, uploads, state.config.max_upload_bytes)
    try:
        return await _create_and_enqueue(state, llm, task_request, inputs, staging, names)
    finally:
        if staging is not None:  # renamed into place on success; removed on any failure
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, staging, True)


async def enqueue_task(state: ServerState, body: TaskCreate) -> TaskRecord:
    """A task without inbox files, checked and queued like ``create_task`` (MCP's task_run)."""
    task_request = build_task_request(body, state)
    if body.sandbox_id is not None:
        await _check_chosen(state, body.sandbox_id)
    llm = await anyio.to_thread.run_sync(resolve_llm, state, body, task_request.settings)
    return await _create_and_enqueue(
        state, llm, task_request, state.config.home / "inputs", None, []
    )


async def retry_task(state: ServerState, original: TaskRecord) -> TaskRecord:
    """A new task with the description, settings, model and inbox files of ``original``,
    on a fresh sandbox, linked to it by ``retry_of``."""
    if original.status not in RETRYABLE_STATUSES:
        raise Conflict(
            f"task {original.id} is {original.status}: only "
            f"{', '.join(RETRYABLE_STATUSES)} tasks can be retried",
            op="retry",
            context={"id": original.id, "status": str(original.status)},
        )
    body = _validate(_fields_of(original))
    task_request = build_task_request(body, state)
    llm = await anyio.to_thread.run_sync(resolve_llm, state, body, task_request.settings)
    inputs = state.config.home / "inputs"
    staging, names = await anyio.to_thread.run_sync(_copy_inputs, inputs, original.id)
    try:
        return await _create_and_enqueue(
            state, llm, task_request, inputs, staging, names, retry_of=original.id
        )
    finally:
        if staging is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, staging, True)


def _fields_of(record: TaskRecord) -> dict[str, Any]:
    """The create fields a record keeps: its settings, including any the runner grew that
    ``TaskCreate`` knows (unknown keys stay behind rather than fail the retry)."""
    settings = record.settings.model_dump(exclude_none=True)
    fields = {k: v for k, v in settings.items() if k in TaskCreate.model_fields}
    fields |= {"description": record.description}
    fields |= {k: v for k in ("provider", "model") if (v := getattr(record, k))}
    return fields


async def _fail_unqueued(state: ServerState, task_id: str, exc: BaseException) -> None:
    """A record that will never be queued must not stay ``queued`` for ever."""
    message = f"the task could not be queued: {exc}"
    with suppress(HivecellError):
        await state.store.update(task_id, status="failed", success=False, error=message)


def _copy_inputs(inputs: Path, task_id: str) -> tuple[Path | None, list[str]]:
    # Synchronous (a thread): copies the original's inbox into a staging folder.
    source = inputs / task_id
    if not source.is_dir():
        return None, []
    staging = Path(_make_staging(inputs))
    names = sorted(p.name for p in source.iterdir() if p.is_file() and not p.is_symlink())
    for name in names:
        shutil.copyfile(source / name, staging / name, follow_symlinks=False)
    return staging, names


async def _create_and_enqueue(
    state: ServerState,
    llm: ProviderConfig,
    task_request: TaskRequest,
    inputs: Path,
    staging: Path | None,
    names: list[str],
    retry_of: str | None = None,
) -> TaskRecord:
    client = make_model(llm)
    record: TaskRecord | None = None
    try:
        service = TaskService(
            home=state.config.home,
            provider=state.provider,
            store=state.store,
            llm=client,
            model=llm.model,
            provider_name=llm.name,
            transfer_limits=state.config.transfer_limits,
        )
        record = await service.create(task_request)
        record = await _place_outputs(state, record)
        if retry_of is not None:
            record = await state.store.update(record.id, retry_of=retry_of)
        paths = await move_into_place(staging, names, inputs / record.id)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await client.aclose()
            if record is not None:  # a server fault after the record (not the caller's input)
                await _fail_unqueued(state, record.id, exc)
        raise
    # From here the manager owns the client and closes it when the task ends.
    state.manager.enqueue(record, task_request.model_copy(update={"files": paths}), service, client)
    return record


async def read_body(request: Request) -> tuple[dict[str, Any], list[UploadFile]]:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=100, max_fields=100)
        return _form_fields(form), [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    try:
        data = await request.json()
    except ValueError:
        raise _invalid("body", "send a JSON object or multipart/form-data") from None
    if not isinstance(data, dict):
        raise _invalid("body", "the body must be a JSON object")
    return data, []


def _form_fields(form: FormData) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in form:
        values = [v for v in form.getlist(key) if isinstance(v, str)]
        if key == "files" or not values:
            continue
        if key in ("disabled_tools", "network_allow", "approve_tools", "tool_domains"):
            fields[key] = [t for v in values for t in v.replace(",", " ").split()]
        else:
            fields[key] = values[-1] if values[-1] != "" else None
    return fields


def _validate(fields: dict[str, Any]) -> TaskCreate:
    try:
        return TaskCreate.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> RequestValidationError:
    """A pydantic error in a body we parse ourselves, reported like FastAPI's own."""
    return RequestValidationError(
        [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
    )


def resolve_llm(state: ServerState, body: TaskCreate, settings: RunSettings) -> ProviderConfig:
    # Synchronous (reads config.toml): runs in a worker thread.
    llm = load_provider(
        body.provider,
        model=body.model,
        config_path=state.config.config_path,
        environ=state.config.environ,
        keyring=state.config.key_store.get,
    )
    if settings.max_cost_usd is not None:  # never a silent $0 against a cost budget
        require_price(llm.model, llm.prices, op="create_task")
    return llm


def build_task_request(body: TaskCreate, state: ServerState) -> TaskRequest:
    prefs = state.prefs
    try:
        settings = RunSettings(
            max_steps=body.max_steps or prefs.task.max_steps,
            timeout_s=body.timeout_s or prefs.task.timeout_s,
            max_cost_usd=body.max_cost_usd or prefs.task.max_cost_usd,
            max_tokens=body.max_tokens or prefs.task.max_tokens,
            disabled_tools=body.disabled_tools,
            approval_tools=(
                prefs.approval.tools if body.approve_tools is None else body.approve_tools
            ),
            approval_shell_rules=prefs.approval.shell_rules,
            approval_timeout_s=prefs.approval.timeout_s,
            pause_at_limits=not prefs.task.limits_final,
            observe_tree=body.observe_tree,
            **({} if body.tool_domains is None else {"tool_domains": body.tool_domains}),
        )
    except ValidationError as exc:  # e.g. an unknown tool name: the caller's input, not a bug
        raise InvalidParams(describe_validation(exc), op="create_task") from None
    if body.desktop is not None and body.sandbox_id is not None:
        raise _invalid("desktop", "a chosen sandbox keeps its own desktop: leave desktop out")
    if body.sandbox_provider is not None and body.sandbox_id is not None:
        message = "a chosen sandbox is already a box or a VM: leave sandbox_provider out"
        raise _invalid("sandbox_provider", message)
    network = body.network or ("nat" if body.network_allow else prefs.sandbox.network)
    if body.network_allow and network != "nat":
        raise _invalid("network_allow", "an allowlist needs network nat (offline reaches nothing)")
    return TaskRequest(
        description=body.description,
        settings=settings,
        network=network,
        network_allow=body.network_allow,
        resolution=(prefs.sandbox.width, prefs.sandbox.height),
        desktop=body.desktop or prefs.sandbox.desktop,
        inbox_writable=body.inbox_writable,
        sandbox_id=body.sandbox_id,
        sandbox_provider=body.sandbox_provider,
    )


async def _check_chosen(state: ServerState, sandbox_id: str) -> None:
    """A task may run in a sandbox a person made and left running; not in the warm pool's
    (a task takes those by itself) nor in another task's own."""
    try:
        info = await state.provider.info(sandbox_id)
    except SandboxNotFound:
        message = f"no sandbox {sandbox_id}; GET /sandboxes lists them"
        raise _invalid("sandbox_id", message) from None
    name = info.spec.name or ""
    if state.pool.is_warm(sandbox_id) or name.startswith(POOL_PREFIX):
        raise _invalid("sandbox_id", f"{sandbox_id} is a warm pool sandbox: leave sandbox_id out")
    if name.startswith(SANDBOX_PREFIX):
        raise _invalid("sandbox_id", f"{sandbox_id} is another task's own sandbox")
    if name.startswith(CREW_PREFIX):
        raise _invalid("sandbox_id", f"{sandbox_id} is a crew agent's desktop")
    if info.status != "running":
        raise Conflict(
            f"sandbox {sandbox_id} is {info.status}: start it first",
            op="create_task",
            context={"field": "sandbox_id", "status": info.status},
        )


async def _place_outputs(state: ServerState, record: TaskRecord) -> TaskRecord:
    folder = state.prefs.output_dir
    if not folder:
        return record
    return await state.store.update(record.id, output_dir=str(Path(folder) / record.id))


async def stage_uploads(
    inputs: Path, names: list[str], uploads: list[UploadFile], limit: int
) -> Path | None:
    """Every upload written to a private staging folder under ``inputs/``; ``None`` when
    there are none. On any rejection the folder is gone before the error propagates."""
    if not uploads:
        return None
    if len(set(names)) != len(names):
        raise _invalid("files", "two files have the same name")
    await anyio.Path(inputs).mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(await anyio.to_thread.run_sync(_make_staging, inputs))
    try:
        await _save_uploads(staging, names, uploads, limit)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, staging, True)
        raise
    return staging


def _make_staging(inputs: Path) -> str:
    # A dot name no task id can have: recovery and listings never mistake it for a task.
    return tempfile.mkdtemp(prefix=".staging-", dir=inputs)


async def move_into_place(staging: Path | None, names: list[str], inbox: Path) -> list[Path]:
    if staging is None:
        return []
    await anyio.Path(staging).rename(inbox)  # same parent folder: atomic
    return [inbox / name for name in names]


async def _save_uploads(
    folder: Path, names: list[str], uploads: list[UploadFile], limit: int
) -> None:
    total = 0
    for name, upload in zip(names, uploads, strict=True):
        # Copied a chunk at a time: an upload is never held whole in memory.
        async with await anyio.open_file(folder / name, "wb") as out:
            while chunk := await upload.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise TooLarge(
                        f"the files exceed {limit} bytes in total: send fewer or smaller "
                        "files, or start the server with a larger --max-upload-mb",
                        op="create_task",
                    )
                await out.write(chunk)


def file_name(upload: UploadFile) -> str:
    name = upload.filename or ""
    if not _FILE_NAME.match(name) or name in (".", ".."):
        raise _invalid("files", f"{name!r} is not a plain file name (no folders, not empty)")
    return name


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])
