"""``/providers``: the model endpoints in config.toml; keys are written, never read back.

A key goes to the OS keyring when one works (``key_storage: "keyring"``), else into
config.toml (0600, ``key_storage: "config"``). A saved key belongs to the ``base_url`` it was
saved with: changing the URL without a new key drops it, and a test against another URL
must bring its own key, so no caller can point a stored secret at a server of its choice.

The server's environment (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``HIVECELL_MODEL``, as
``hivecell up`` saw it) is listed as the read-only provider ``environment`` (``source:
"environment"``); it is the default when config.toml names none. Changing it means changing the
environment and restarting the server, so this API neither saves nor deletes it.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from hivecell.agent.llm import ProviderConfig, load_provider, make_model
from hivecell.agent.llm.config import ENVIRONMENT, KEY_ENV_PATTERN, Kind, environment_provider
from hivecell.errors import HivecellError, InvalidParams, NotFound
from hivecell.keystore import KEYRING
from hivecell.server import configfile
from hivecell.server.api.deps import AUTH, State
from hivecell.server.app import ServerState

router = APIRouter(tags=["providers"], dependencies=AUTH)
NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_PUBLIC = ("kind", "base_url", "model", "api_key_env", "max_retries", "timeout_s")
_READ_ONLY = (
    "the environment provider is read-only: it is what OPENAI_API_KEY, OPENAI_BASE_URL and "
    "HIVECELL_MODEL were when hivecell up started; change them there and restart the server, "
    "or save a provider under another name"
)


class ProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    kind: Kind | None = Field(
        None, description="the API it speaks: openai-chat (default), anthropic, openai-responses"
    )
    base_url: HttpUrl
    model: str = Field(min_length=1)
    api_key: str | None = Field(
        None, description="stored in the OS keyring, else in config.toml (0600); never returned"
    )
    api_key_env: str | None = Field(
        None, pattern=KEY_ENV_PATTERN, description="a key variable: *_API_KEY or *_TOKEN"
    )
    max_retries: int | None = Field(None, ge=0, le=100)
    timeout_s: float | None = Field(None, gt=0)
    default: bool = Field(False, description="make this the default provider")


class ProviderTest(BaseModel):
    """Optional overrides to try before saving; another base_url needs its own api_key."""

    model_config = ConfigDict(extra="forbid")

    base_url: HttpUrl | None = None
    model: str | None = Field(None, min_length=1)
    api_key: str | None = Field(None, min_length=1)


@router.get("/providers")
async def list_providers(state: State) -> dict[str, Any]:
    document = await anyio.to_thread.run_sync(configfile.read, state.config.config_path)
    listing = _listing(document, state.config.environ)
    return listing | {"key_storage": state.config.key_store.kind}


@router.post("/providers", status_code=201)
async def save_provider(body: ProviderIn, state: State) -> dict[str, Any]:
    if body.name == ENVIRONMENT:
        raise _read_only("providers.save")
    keys = state.config.key_store

    def change(document: Any) -> None:
        providers = configfile.table(document, "providers")
        old = dict(providers.get(body.name, {}))
        values = body.model_dump(
            exclude={"name", "default", "api_key"}, exclude_none=True, mode="json"
        )
        values["base_url"] = _url(values["base_url"])
        if body.api_key is not None:
            values |= _store_key(state, body.name, body.api_key)
        elif old.get("base_url") == values["base_url"]:
            # Editing other fields keeps the key, for the URL it was saved with only.
            values |= {k: old[k] for k in ("api_key", "api_key_store") if k in old}
        elif old.get("api_key_store") == KEYRING:
            keys.delete(body.name)
        providers[body.name] = values
        if body.default:
            document["default_provider"] = body.name

    await anyio.to_thread.run_sync(configfile.edit, state.config.config_path, change)
    return await _one(state, body.name)


def _store_key(state: ServerState, name: str, key: str) -> dict[str, str]:
    keys = state.config.key_store
    if keys.kind == "keyring":
        keys.set(name, key)
        return {"api_key_store": KEYRING}
    return {"api_key": key}


@router.delete("/providers/{name}", status_code=204)
async def delete_provider(name: str, state: State) -> Response:
    def change(document: Any) -> None:
        providers = configfile.table(document, "providers")
        if name == ENVIRONMENT and name not in providers:
            raise _read_only("providers.delete")
        if name not in providers:
            raise NotFound(f"no provider {name!r}", op="providers", context={"name": name})
        if dict(providers[name]).get("api_key_store") == KEYRING:
            state.config.key_store.delete(name)
        del providers[name]
        if document.get("default_provider") == name:
            del document["default_provider"]

    await anyio.to_thread.run_sync(configfile.edit, state.config.config_path, change)
    return Response(status_code=204)


@router.post("/providers/{name}/test")
async def test_provider(
    name: str, state: State, body: ProviderTest | None = None
) -> dict[str, Any]:
    """One real, tiny chat call; the answer says how long it took or what went wrong."""
    config = await anyio.to_thread.run_sync(_load, state, name, body or ProviderTest())
    quick = config.model_copy(update={"max_retries": 0, "timeout_s": min(config.timeout_s, 30)})
    started = time.perf_counter()
    try:
        async with make_model(quick) as client:
            reply = await client.complete([{"role": "user", "content": "Reply with: ok"}])
    except HivecellError as exc:
        error = {"code": exc.code, "message": exc.message}
        return {"ok": False, "name": name, "model": config.model, "error": error}
    latency = round((time.perf_counter() - started) * 1000, 1)
    return {
        "ok": True,
        "name": name,
        "model": config.model,
        "latency_ms": latency,
        "reply": (reply.text or "")[:200],
    }


def _load(state: ServerState, name: str, body: ProviderTest) -> ProviderConfig:
    saved = load_provider(
        name,
        config_path=state.config.config_path,
        environ=state.config.environ,
        keyring=state.config.key_store.get,
    )
    url = _url(str(body.base_url)) if body.base_url else None
    if url is not None and url != saved.base_url and body.api_key is None:
        raise InvalidParams(
            f"base_url {url} is not the one provider {name!r} was saved with: send its api_key "
            "too (a saved key is only ever sent to its own base_url)",
            op="providers.test",
            context={"name": name, "base_url": url},
        )
    return load_provider(
        name,
        model=body.model,
        base_url=url,
        api_key=body.api_key,
        config_path=state.config.config_path,
        environ=state.config.environ,
        keyring=state.config.key_store.get,
    )


def _read_only(op: str) -> InvalidParams:
    return InvalidParams(_READ_ONLY, op=op, context={"name": ENVIRONMENT})


def _url(value: str) -> str:
    return value.rstrip("/")


async def _one(state: ServerState, name: str) -> dict[str, Any]:
    listing = await list_providers(state)
    return next(p for p in listing["items"] if p["name"] == name)


def _listing(document: Any, environ: Any) -> dict[str, Any]:
    providers = dict(document.get("providers", {}))
    default = document.get("default_provider")
    env = environment_provider(environ)
    if env is not None and ENVIRONMENT not in providers:
        # With no default_provider, a task without a provider runs on the environment.
        default = default or ENVIRONMENT
        environment = _environment(env, default)
    else:
        environment = None
    items = [_masked(name, dict(table), default) for name, table in sorted(providers.items())]
    return {"default": default, "items": items + ([environment] if environment else [])}


def _masked(name: str, table: dict[str, Any], default: Any) -> dict[str, Any]:
    view = {field: table.get(field) for field in _PUBLIC}
    view["kind"] = view["kind"] or "openai-chat"
    masked = _mask(str(table.get("api_key") or ""))
    if table.get("api_key_store") == KEYRING:
        masked = "in OS keyring"
    entry = {"name": name, **view, "api_key": masked, "default": name == default}
    return entry | {"source": "config", "read_only": False}


def _environment(env: dict[str, str | None], default: Any) -> dict[str, Any]:
    view = {"kind": "openai-chat", "base_url": env["base_url"], "model": env["model"]}
    view["api_key_env"] = "OPENAI_API_KEY"
    empty = {"max_retries": None, "timeout_s": None}
    masked = _mask(env["api_key"] or "")
    entry = {"name": ENVIRONMENT, **view, **empty, "api_key": masked}
    return entry | {"default": default == ENVIRONMENT, "source": "environment", "read_only": True}


def _mask(key: str) -> str | None:
    """Enough to recognise a key by, never enough to use it."""
    if not key:
        return None
    return "…" + key[-4:] if len(key) > 11 else "set"
