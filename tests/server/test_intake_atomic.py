"""A rejected ``POST /tasks`` leaves nothing behind: no record, no inputs folder, no queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import finish
from tests.server.helpers import serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_rejected_upload_leaves_no_task_and_no_files(home: Path) -> None:
    async with ScriptedLLMServer(finish("done")) as llm:
        write_provider(home, llm.base_url)
        async with serve(home, max_upload_bytes=1000) as running:
            data = {"description": "two files"}
            bad_name = [
                ("files", ("good.txt", b"fine\n", "text/plain")),
                ("files", ("..", b"sneaky\n", "text/plain")),
            ]
            too_large = [
                ("files", ("small.txt", b"fine\n", "text/plain")),
                ("files", ("big.bin", b"x" * 5000, "application/octet-stream")),
            ]
            for files in (bad_name, too_large):
                response = await running.post("/tasks", data=data, files=files)
                assert 400 <= response.status_code < 500, response.text
                listed = (await running.get("/tasks")).json()
                assert listed["total"] == 0 and listed["items"] == []
                inputs = home / "inputs"
                assert not inputs.exists() or list(inputs.iterdir()) == []
            # The same files, within the limit and well named, make a task with its inbox.
            ok = [("files", ("small.txt", b"fine\n", "text/plain"))]
            response = await running.post("/tasks", data=data, files=ok)
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            assert [p.name for p in (home / "inputs").iterdir()] == [task_id]
            assert (home / "inputs" / task_id / "small.txt").read_bytes() == b"fine\n"
            await running.wait_for(task_id, lambda t: t["status"] == "completed")


async def test_desktop_choices_that_cannot_hold_are_refused(home: Path) -> None:
    async with ScriptedLLMServer(finish("done")) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            fancy = await running.post("/tasks", json={"description": "x", "desktop": "fancy"})
            assert fancy.status_code == 422 and "desktop" in fancy.text
            both = {"description": "x", "desktop": "minimal", "sandbox_id": "sb-anything"}
            refused = await running.post("/tasks", json=both)
            assert refused.status_code == 422, refused.text
            assert "keeps its own desktop" in refused.text
            assert (await running.get("/tasks")).json()["total"] == 0
            # Settings choose the default desktop, for tasks and the warm pool alike.
            prefs = (await running.get("/settings")).json()
            assert prefs["sandbox"]["desktop"] == "full"
            prefs["sandbox"]["desktop"] = "minimal"
            saved = await running.client.put("/api/v1/settings", json=prefs)
            assert saved.status_code == 200, saved.text
            task = (await running.post("/tasks", json={"description": "x"})).json()
            assert task["settings"]["desktop"] == "minimal"
            await running.wait_for(task["id"], lambda t: t["status"] == "completed")
            shapes = (await running.get("/pool")).json()["shapes"]
            assert "minimal" in {shape["spec"]["desktop"] for shape in shapes}, shapes
