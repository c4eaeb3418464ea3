"""A caller tries to make the server send a stored secret to a URL of its choice.

The "attacker's server" is a loopback listener that records every request head it gets; the
stored key must never appear in one.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from keyrings.alt.file import PlaintextKeyring

from hivecell.keystore import KeyStore
from tests.security.conftest_server import recorder, serve_config

pytestmark = pytest.mark.anyio
SECRET = "sk-stored-secret-0123456789"


async def test_a_stored_key_never_goes_to_another_base_url(home: Path) -> None:
    async with (
        recorder() as legit,
        recorder() as thief,
        serve_config(home) as server,
        server.client() as api,
    ):
        saved = {"name": "p", "base_url": legit.url, "model": "m", "api_key": SECRET}
        assert (await api.post("/api/v1/providers", json=saved)).status_code == 201
        # 1. Test against another URL, hoping the stored key comes along: refused.
        probe = await api.post("/api/v1/providers/p/test", json={"base_url": thief.url})
        assert probe.status_code == 422, probe.text
        assert "api_key" in probe.json()["error"]["message"]
        # 2. Re-save with only the URL changed, then test: the key stayed behind.
        moved = {"name": "p", "base_url": thief.url, "model": "m"}
        assert (await api.post("/api/v1/providers", json=moved)).status_code == 201
        listed = (await api.get("/api/v1/providers")).json()["items"][0]
        assert listed["api_key"] is None
        tested = await api.post("/api/v1/providers/p/test")
        assert tested.status_code == 200 and tested.json()["ok"] is False
        # 3. Back to the first URL: the key is gone, it does not come back either.
        back = {"name": "p", "base_url": legit.url, "model": "m"}
        assert (await api.post("/api/v1/providers", json=back)).status_code == 201
        await api.post("/api/v1/providers/p/test")
    assert thief.heads, "the test call should have reached the recording listener"
    assert all(SECRET.encode() not in head for head in thief.heads + legit.heads)
    assert SECRET not in (home / "config.toml").read_text()


async def test_a_test_with_its_own_key_may_use_another_url(home: Path) -> None:
    async with (
        recorder() as legit,
        recorder() as other,
        serve_config(home) as server,
        server.client() as api,
    ):
        saved = {"name": "p", "base_url": legit.url, "model": "m", "api_key": SECRET}
        assert (await api.post("/api/v1/providers", json=saved)).status_code == 201
        body = {"base_url": other.url, "api_key": "sk-other-key-for-the-test"}
        tested = await api.post("/api/v1/providers/p/test", json=body)
        assert tested.status_code == 200, tested.text
        await api.post("/api/v1/providers/p/test")  # the saved one, to its own URL
    assert [b"sk-other-key-for-the-test" in head for head in other.heads] == [True]
    assert any(SECRET.encode() in head for head in legit.heads)


@pytest.mark.parametrize(
    "name", ["HOME", "AWS_SECRET_ACCESS_KEY", "PATH", "openai_api_key", "DATABASE_URL"]
)
async def test_api_key_env_only_names_a_key_variable(home: Path, name: str) -> None:
    async with serve_config(home) as server, server.client() as api:
        body = {"name": "p", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": name}
        response = await api.post("/api/v1/providers", json=body)
        assert response.status_code == 422, response.text
        assert "api_key_env" in response.json()["error"]["message"]
        good = body | {"api_key_env": "GROQ_API_KEY"}
        assert (await api.post("/api/v1/providers", json=good)).status_code == 201


async def test_a_hand_written_api_key_env_is_checked_too(home: Path) -> None:
    (home / "config.toml").write_text(
        '[providers.p]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\napi_key_env = "HOME"\n'
    )
    async with serve_config(home, environ={"HOME": "/root"}) as server, server.client() as api:
        response = await api.post("/api/v1/providers/p/test")
        assert response.status_code == 400, response.text
        assert "_API_KEY or _TOKEN" in response.json()["error"]["message"]


async def test_keys_stay_in_a_private_config_without_a_keyring(home: Path) -> None:
    store = KeyStore.detect()  # this headless machine: keyring's fail backend
    assert store.kind == "config"
    async with (
        recorder() as legit,
        serve_config(home, key_store=store) as server,
        server.client() as api,
    ):
        saved = {"name": "p", "base_url": legit.url, "model": "m", "api_key": SECRET}
        assert (await api.post("/api/v1/providers", json=saved)).status_code == 201
        listing = (await api.get("/api/v1/providers")).json()
    assert listing["key_storage"] == "config"
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600


async def test_keys_go_to_the_keyring_and_stay_tied_to_their_url(home: Path) -> None:
    """With a working keyring (keyrings.alt's file backend, a real keyring backend) the key
    never touches config.toml, is used for its own URL, and leaves with its URL."""
    backend = PlaintextKeyring()
    backend.file_path = str(home / "keyring.cfg")  # type: ignore[misc]
    store = KeyStore(backend)
    async with (
        recorder() as legit,
        recorder() as thief,
        serve_config(home, key_store=store) as server,
        server.client() as api,
    ):
        saved = {"name": "p", "base_url": legit.url, "model": "m", "api_key": SECRET}
        assert (await api.post("/api/v1/providers", json=saved)).status_code == 201
        listing = (await api.get("/api/v1/providers")).json()
        assert listing["key_storage"] == "keyring"
        assert listing["items"][0]["api_key"] == "in OS keyring"
        assert SECRET not in (home / "config.toml").read_text()
        assert (await api.post("/api/v1/providers/p/test")).status_code == 200
        assert any(SECRET.encode() in head for head in legit.heads)  # used for its own URL
        moved = {"name": "p", "base_url": thief.url, "model": "m"}
        assert (await api.post("/api/v1/providers", json=moved)).status_code == 201
        assert backend.get_password("hivecell", "p") is None  # left with its URL
        await api.post("/api/v1/providers/p/test")
        again = saved | {"base_url": thief.url, "api_key": "sk-new-key-for-the-new-url"}
        assert (await api.post("/api/v1/providers", json=again)).status_code == 201
        assert (await api.delete("/api/v1/providers/p")).status_code == 204
        assert backend.get_password("hivecell", "p") is None
    assert thief.heads and all(SECRET.encode() not in head for head in thief.heads)
