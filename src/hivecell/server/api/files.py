"""What a task left behind: its trace, screenshots, output files and exports."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response, StreamingResponse

from hivecell.agent.service import TRANSFER_FILE
from hivecell.errors import NotFound, PathDenied, SandboxNotFound
from hivecell.sandbox.transfer import TransferReport
from hivecell.server.api.deps import AUTH, State
from hivecell.store import TaskRecord
from hivecell.trace import TraceReader, export_html, export_json, export_markdown, read_network
from hivecell.trace.bundle import write_bundle
from hivecell.trace.video import MEDIA_TYPES, write_video

router = APIRouter(tags=["tasks"], dependencies=AUTH)
_CHUNK = 256 * 1024  # ZIP and video downloads are streamed from their temp file in these

_EXPORTS = {
    "json": (export_json, "application/json", "json"),
    # Self-contained: screenshots as data: URIs (the ZIP's own trace.md links screenshots/).
    "md": (lambda d: export_markdown(d, embed_images=True), "text/markdown; charset=utf-8", "md"),
    "html": (export_html, "text/html; charset=utf-8", "html"),
}


@router.get("/tasks/{task_id}/trace")
async def trace(task_id: str, state: State) -> dict[str, Any]:
    record = await state.store.get(task_id)
    trace_dir = _trace_dir(record)
    if not await anyio.Path(trace_dir).is_dir():
        return {"task_id": task_id, "truncated": False, "steps": []}
    loaded = await anyio.to_thread.run_sync(lambda: TraceReader(trace_dir).load())
    steps = [step.model_dump(mode="json", exclude_none=True) for step in loaded.steps]
    return {"task_id": task_id, "truncated": loaded.truncated, "steps": steps}


@router.get("/tasks/{task_id}/network")
async def network(task_id: str, state: State) -> dict[str, Any]:
    """The sandbox's outbound connections and DNS questions (``nat`` tasks): live from the
    sandbox while the task runs, from the trace's ``network.jsonl`` once it ended."""
    record = await state.store.get(task_id)
    items = await anyio.to_thread.run_sync(read_network, _trace_dir(record))
    source = "trace"
    if items is None:
        items, source = [], "live"
        if record.sandbox_id is not None:
            try:
                log = await state.provider.network_log(record.sandbox_id)
                items = [c.model_dump(mode="json") for c in log]
            except SandboxNotFound:
                source = "none"
    return {"task_id": task_id, "source": source, "items": items}


@router.get("/tasks/{task_id}/screenshots/{name}", response_class=Response)
async def screenshot(task_id: str, name: str, state: State) -> Response:
    trace_dir = _trace_dir(await state.store.get(task_id))
    data = await anyio.to_thread.run_sync(_read_screenshot, trace_dir, name)
    if data is None:
        raise NotFound(
            f"task {task_id} has no screenshot {name!r}",
            op="screenshot",
            context={"id": task_id, "name": name},
        )
    media = "image/webp" if name.endswith(".webp") else "image/png"
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/tasks/{task_id}/artifacts")
async def artifacts(task_id: str, state: State) -> dict[str, Any]:
    record = await state.store.get(task_id)
    items = await anyio.to_thread.run_sync(_list_outputs, record)
    transfer = await anyio.to_thread.run_sync(_transfer_report, record)
    return {"task_id": task_id, "items": items, "transfer": transfer}


@router.get("/tasks/{task_id}/artifacts/{name:path}", response_class=FileResponse)
async def artifact(task_id: str, name: str, state: State) -> FileResponse:
    record = await state.store.get(task_id)
    path = await anyio.to_thread.run_sync(_confined, record, name)
    return FileResponse(path, filename=path.name)


@router.get("/tasks/{task_id}/export", response_class=Response)
async def export(
    task_id: str,
    state: State,
    format: Literal["json", "md", "html", "zip", "mp4", "webm"] = Query("json"),
) -> Response:
    record = await state.store.get(task_id)
    trace_dir = _trace_dir(record)
    disposition = f'attachment; filename="{task_id}.{format}"'
    if format == "zip":
        outputs = Path(record.output_dir) if record.output_dir else None
        handle = await _in_temp_file(lambda f: write_bundle(trace_dir, outputs, f))
        return _temp_file_response(handle, "application/zip", disposition)
    if format in MEDIA_TYPES:
        handle = await _in_temp_file(lambda f: _video_or_404(record, trace_dir, f, format))
        return _temp_file_response(handle, MEDIA_TYPES[format], disposition)
    render, media, _ = _EXPORTS[format]
    text = await anyio.to_thread.run_sync(render, trace_dir)
    return Response(text, media_type=media, headers={"Content-Disposition": disposition})


async def _in_temp_file(write: Callable[[BinaryIO], None]) -> BinaryIO:
    """Run the blocking ``write`` in a worker thread into an unnamed temp file, rewound. It
    has no name on disk, so nothing is left behind however the download ends."""

    def build() -> BinaryIO:
        handle = tempfile.TemporaryFile(prefix="hivecell-export-")  # noqa: SIM115
        try:
            write(handle)
            handle.seek(0)
        except BaseException:
            handle.close()
            raise
        return handle

    return await anyio.to_thread.run_sync(build)


def _temp_file_response(handle: BinaryIO, media: str, disposition: str) -> StreamingResponse:
    length = os.fstat(handle.fileno()).st_size
    headers = {"Content-Disposition": disposition, "Content-Length": str(length)}
    return StreamingResponse(_chunks(handle), media_type=media, headers=headers)


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(handle.read, _CHUNK):
            yield chunk
    finally:
        handle.close()


def _video_or_404(record: TaskRecord, trace_dir: Path, dest: BinaryIO, format: str) -> None:
    if not trace_dir.is_dir() or write_video(trace_dir, dest, format=format) == 0:  # type: ignore[arg-type]
        raise NotFound(
            f"task {record.id} has no screenshots to replay",
            op="export.video",
            context={"id": record.id},
        )


def _trace_dir(record: TaskRecord) -> Path:
    if not record.trace_dir:
        raise NotFound(f"task {record.id} has no trace", op="trace", context={"id": record.id})
    return Path(record.trace_dir)


def _read_screenshot(trace_dir: Path, name: str) -> bytes | None:
    if not trace_dir.is_dir():
        return None
    return TraceReader(trace_dir).screenshot(name)  # only bare recorded names are served


def _transfer_report(record: TaskRecord) -> dict[str, Any] | None:
    """What collecting the outbox copied and left out (None before it ran)."""
    if not record.trace_dir:
        return None
    try:
        data = (Path(record.trace_dir) / TRANSFER_FILE).read_bytes()
    except OSError:
        return None
    return TransferReport.model_validate_json(data).model_dump(mode="json")


def _output_dir(record: TaskRecord) -> Path:
    if not record.output_dir:
        raise NotFound(f"task {record.id} has no output folder", op="artifacts")
    return Path(record.output_dir).resolve()


def _list_outputs(record: TaskRecord) -> list[dict[str, Any]]:
    root = _output_dir(record)
    if not root.is_dir():
        return []
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return [{"name": str(p.relative_to(root)), "size": p.stat().st_size} for p in files]


def _confined(record: TaskRecord, name: str) -> Path:
    """``name`` inside the output folder, symlinks resolved; anything outside is refused."""
    root = _output_dir(record)
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise PathDenied(
            f"{name!r} is outside the task's output folder", op="artifact", context={"name": name}
        )
    if not path.is_file():
        raise NotFound(
            f"task {record.id} has no output {name!r}", op="artifact", context={"name": name}
        )
    return path
