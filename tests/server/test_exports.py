"""GET /tasks/{id}/export in every format, on a real task run with the scripted model."""

from __future__ import annotations

import base64
import io
import re
import zipfile
from pathlib import Path

import av
import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.store import TaskStore, default_database_url
from tests.agent.helpers import act, call, finish
from tests.server.helpers import Running, serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WRITE = "echo exported > /shared/outbox/result.txt"


async def _planted_link(home: Path, task_id: str) -> None:
    """What a hostile sandbox could leave: a link in the output folder to a host file."""
    async with TaskStore(default_database_url(home)) as store:
        record = await store.get(task_id)
    assert record.output_dir
    (Path(record.output_dir) / "passwd").symlink_to("/etc/passwd")


async def test_export_formats(home: Path) -> None:
    steps = [act(call("run_shell", command=WRITE)), act(call("wait", seconds=0)), *finish("ok")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            task_id = (await running.post("/tasks", json={"description": "write"})).json()["id"]
            task = await running.wait_for(task_id, lambda t: t["status"] == "completed")
            assert task["artifacts"] == ["result.txt"]
            await _planted_link(home, task_id)
            shots = await _check_zip(running, task_id)
            await _check_markdown(running, task_id, shots)
            await _check_video(running, task_id, len(shots))
            await _check_refusals(running, task_id)


async def _export(running: Running, task_id: str, fmt: str) -> tuple[bytes, str, str]:
    response = await running.get(f"/tasks/{task_id}/export", params={"format": fmt})
    assert response.status_code == 200, response.text
    disposition = response.headers["content-disposition"]
    assert disposition == f'attachment; filename="{task_id}.{fmt}"'
    return response.content, response.headers["content-type"], disposition


async def _check_zip(running: Running, task_id: str) -> list[str]:
    data, media, _ = await _export(running, task_id, "zip")
    assert media == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    for name in ("trace.jsonl", "trace.md", "conversation.json", "outputs/result.txt"):
        assert name in names
    assert "transfer.json" in names  # the outbox collection's report
    assert archive.read("outputs/result.txt") == b"exported\n"
    assert "outputs/passwd" not in names  # the planted link is not followed
    assert all(b"root:x:0:0" not in archive.read(name) for name in names)
    shots = [n for n in names if n.startswith("screenshots/")]
    assert shots
    return shots


async def _check_markdown(running: Running, task_id: str, shots: list[str]) -> None:
    data, media, _ = await _export(running, task_id, "md")
    assert media == "text/markdown; charset=utf-8"
    text = data.decode()
    assert "](screenshots/" not in text
    uris = re.findall(r"\]\(data:image/(?:png|webp);base64,([A-Za-z0-9+/=]+)\)", text)
    assert uris and base64.b64decode(uris[0])[:4] in (b"\x89PNG", b"RIFF")
    json_data, json_media, _ = await _export(running, task_id, "json")
    assert json_media == "application/json" and b'"hivecell-trace"' in json_data
    html, html_media, _ = await _export(running, task_id, "html")
    assert html_media.startswith("text/html") and b"run_shell" in html


async def _check_video(running: Running, task_id: str, screenshots: int) -> None:
    trace = (await running.get(f"/tasks/{task_id}/trace")).json()["steps"]
    with_shot = sum(1 for step in trace if step.get("screenshot"))
    for fmt, media in (("mp4", "video/mp4"), ("webm", "video/webm")):
        data, content_type, _ = await _export(running, task_id, fmt)
        assert content_type == media
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            assert (stream.width, stream.height) == (1280, 800)
        assert frames == with_shot and frames >= 1
    assert with_shot >= 1 and screenshots >= 1


async def _check_refusals(running: Running, task_id: str) -> None:
    unknown = await running.get("/tasks/t-nope/export", params={"format": "zip"})
    assert unknown.status_code == 404
    bad = await running.get(f"/tasks/{task_id}/export", params={"format": "exe"})
    assert bad.status_code == 422
