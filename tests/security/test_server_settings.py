"""``output_dir`` decides where the host writes what a sandbox produced: a caller must not
aim it at host configuration, into the sandboxes' own folders, or through a link."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.security.conftest_server import serve_config

pytestmark = pytest.mark.anyio


async def test_output_dir_is_validated(home: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("")
    refused = {
        "/etc": "inside /etc",
        "/etc/cron.d": "inside /etc",
        "/": "must not be /",
        "/sys/kernel": "inside /sys",
        "relative/out": "absolute",
        str(tmp_path / "link"): "symlink",
        str(tmp_path / "link" / "out"): "symlink",
        str(tmp_path / "real" / ".." / "real"): "symlink",
        str(home / "sandboxes" / "sb-1" / "shared"): "inside",
        str(tmp_path / "file" / "out"): "create",
    }
    async with serve_config(home) as server, server.client() as api:
        for value, rule in refused.items():
            response = await api.put("/api/v1/settings", json={"output_dir": value})
            assert response.status_code == 422, (value, response.text)
            message = response.json()["error"]["message"]
            assert "output_dir" in message and rule in message, (value, message)
        assert (await api.get("/api/v1/settings")).json()["output_dir"] is None
        good = str(tmp_path / "real" / "outputs")
        response = await api.put("/api/v1/settings", json={"output_dir": good})
        assert response.status_code == 200, response.text
    assert await anyio.Path(good).is_dir()  # created, private
