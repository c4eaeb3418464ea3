"""Which model endpoint to talk to, resolved at the edge: argument > config file > environment.

Named providers are ``[providers.NAME]`` tables in ``$HIVECELL_HOME/config.toml``::

    default_provider = "local"          # used when no name is given (optional)

    [providers.local]
    base_url = "http://127.0.0.1:11434/v1"
    model = "qwen2.5vl:7b"              # no key: loopback servers get a placeholder

    [providers.groq]
    base_url = "https://api.groq.com/openai/v1"
    model = "llama-4-scout"
    api_key_env = "GROQ_API_KEY"        # read the key from this variable, not OPENAI_API_KEY
    max_retries = 3

    [providers.claude]
    kind = "anthropic"                  # openai-chat (default), anthropic, openai-responses
    model = "claude-sonnet-4-5"         # Anthropic's URL and ANTHROPIC_API_KEY by default

    [providers.groq.prices."llama-4-scout"]
    input = 0.11                        # USD per 1M tokens
    output = 0.34

The environment gives the defaults: ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` (or the variable a
table names in ``api_key_env``, which then replaces it, so one vendor's key is never sent to
another vendor's URL by accident) and ``HIVECELL_MODEL``. What the environment alone
configures is itself a provider, named ``environment``: it is what ``load_provider(None)``
resolves to when no ``default_provider`` is set, and ``load_provider("environment")`` names it
explicitly (unless config.toml defines a table of that name).

Keys for local servers: Ollama, vLLM and LM Studio accept any key, so when no key is configured
and ``base_url`` is a loopback address, the placeholder ``"local"`` is used and nothing has to
be set. A non-loopback URL without a key is an error, even on a LAN: a silent placeholder there
would turn a forgotten key into a confusing 401 from a remote server. A key that is given
explicitly (``api_key = "none"`` for an unauthenticated vLLM on another host) is always used
as is.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from hivecell.agent.llm.pricing import ModelPrice
from hivecell.errors import ConfigError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_BASE_URL = "https://api.anthropic.com"
# Which wire protocol (and so which adapter, agent/llm/adapters.py) a provider speaks.
Kind = Literal["openai-chat", "anthropic", "openai-responses"]
KINDS: tuple[Kind, ...] = ("openai-chat", "anthropic", "openai-responses")
# Per kind: the default URL and the environment variables of its URL and key.
_KIND_ENV = {"anthropic": (ANTHROPIC_BASE_URL, "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")}
_OPENAI_ENV = (DEFAULT_BASE_URL, "OPENAI_BASE_URL", "OPENAI_API_KEY")
LOCAL_API_KEY = "local"
# api_key_env may only name a key variable: a table must not be able to send HOME, a cloud
# secret or any other variable of the server's environment to its base_url.
KEY_ENV_PATTERN = r"^[A-Z][A-Z0-9_]*_(API_KEY|TOKEN)$"
KEY_ENV_RULE = "api_key_env must name a key variable: upper case, ending in _API_KEY or _TOKEN"
_OP = "llm.config"
ENVIRONMENT = "environment"
ENV_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HIVECELL_MODEL")


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    kind: Kind = "openai-chat"
    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr
    model: str = Field(min_length=1)
    max_retries: int = Field(5, ge=0, le=100)
    timeout_s: float = Field(120.0, gt=0)
    backoff_base_s: float = Field(1.0, gt=0, description="first retry waits up to this long")
    backoff_max_s: float = Field(60.0, gt=0, description="cap of one exponential backoff wait")
    retry_after_max_s: float = Field(120.0, ge=0, description="cap of a server's Retry-After")
    prices: dict[str, ModelPrice] = Field(default_factory=dict)


def load_provider(
    name: str | None,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    config_path: Path,
    environ: Mapping[str, str],
    keyring: Callable[[str], str | None] | None = None,
) -> ProviderConfig:
    """Resolve one provider; raises ``ConfigError`` naming the flag, variable and file to fix.

    Reads ``config_path`` (a missing file is fine unless a provider is named). Synchronous:
    call it at the edge, before or outside the event loop's hot path. ``keyring`` looks up
    a key the table keeps in the OS keyring (``api_key_store = "keyring"``) by provider name.
    """
    document = _read_document(config_path)
    name = name or _optional_str(document.get("default_provider"))
    table = _provider_table(document, name, config_path)
    where = _where(document, name, config_path)
    default_url, url_env, key_env = _KIND_ENV.get(str(table.get("kind")), _OPENAI_ENV)
    table_url = _optional_str(table.pop("base_url", None))
    url = _first(base_url, table_url, environ.get(url_env))
    url = _check_url(url or default_url)
    if table_url is not None and url != table_url.rstrip("/"):
        # The table's key belongs to the table's URL: another URL never receives it.
        for field in ("api_key", "api_key_store", "api_key_env"):
            table.pop(field, None)
    stored = _stored_key(table, name, keyring, where)
    key = _resolve_key(_first(api_key, stored), table, environ, url, where, key_env)
    chosen = _resolve_model(model, table, environ, where)
    prices = {**_mapping(document.get("prices")), **_mapping(table.pop("prices", None))}
    fields = {"name": name or ENVIRONMENT, "base_url": url, "api_key": key, "model": chosen}
    return _build({**table, **fields, "prices": prices}, where)


def environment_provider(environ: Mapping[str, str]) -> dict[str, str | None] | None:
    """What the environment alone configures, or None when it sets none of ``ENV_VARIABLES``.

    The key is in the result for the caller to mask: never put it on a wire as is.
    """
    if not any(environ.get(variable) for variable in ENV_VARIABLES):
        return None
    return {
        "base_url": (environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
        "model": environ.get("HIVECELL_MODEL") or None,
        "api_key": environ.get("OPENAI_API_KEY") or None,
    }


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_document(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read {path}: {exc}", op=_OP, context={"path": str(path)}
        ) from exc


def _provider_table(document: dict[str, Any], name: str | None, path: Path) -> dict[str, Any]:
    if name is None:
        return {}
    providers = _mapping(document.get("providers"))
    if name == ENVIRONMENT and name not in providers:
        return {}  # the environment's own provider: no table, the variables fill everything
    if name not in providers:
        known = ", ".join(sorted(providers)) or "none"
        raise ConfigError(
            f"no provider {name!r}: add a [providers.{name}] table to {path} (defined: {known})",
            op=_OP,
            context={"provider": name, "path": str(path)},
        )
    return dict(_mapping(providers[name]))


def _where(document: dict[str, Any], name: str | None, path: Path) -> str:
    """Where the fix goes, for error messages."""
    if name == ENVIRONMENT and name not in _mapping(document.get("providers")):
        return f"the environment of the process (or a provider table in {path})"
    return f"[providers.{name}] in {path}" if name else f"a provider table in {path}"


def _resolve_key(
    arg: str | None,
    table: dict[str, Any],
    environ: Mapping[str, str],
    url: str,
    where: str,
    default_env: str = "OPENAI_API_KEY",
) -> str:
    key_env = _optional_str(table.pop("api_key_env", None)) or default_env
    if not re.fullmatch(KEY_ENV_PATTERN, key_env):
        raise ConfigError(
            f"{KEY_ENV_RULE} (got {key_env!r} in {where})", op=_OP, context={"env": key_env}
        )
    key = _first(arg, table.pop("api_key", None), environ.get(key_env))
    if key:
        return key
    if is_loopback(url):
        return LOCAL_API_KEY
    raise ConfigError(
        f"no API key for {url}: pass --api-key, set {key_env}, "
        f"or set api_key (or api_key_env) in {where}",
        op=_OP,
        context={"base_url": url, "env": key_env},
    )


def _stored_key(
    table: dict[str, Any],
    name: str | None,
    keyring: Callable[[str], str | None] | None,
    where: str,
) -> str | None:
    if table.pop("api_key_store", None) != "keyring" or name is None:
        return None
    key = keyring(name) if keyring is not None else None
    if not key:
        raise ConfigError(
            f"the key of {where} is kept in the OS keyring, which has no entry for it here: "
            "save the provider's key again (Settings or POST /providers)",
            op=_OP,
            context={"provider": name},
        )
    return key


def _resolve_model(
    arg: str | None, table: dict[str, Any], environ: Mapping[str, str], where: str
) -> str:
    model = _first(arg, table.pop("model", None), environ.get("HIVECELL_MODEL"))
    if not model:
        raise ConfigError(
            f"no model set: pass --model, set HIVECELL_MODEL, or set model in {where}", op=_OP
        )
    return model


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"base_url {url!r} is not an http(s) URL: fix --base-url, OPENAI_BASE_URL "
            "or base_url in the provider table",
            op=_OP,
            context={"base_url": url},
        )
    return url.rstrip("/")


def _build(values: dict[str, Any], where: str) -> ProviderConfig:
    try:
        return ProviderConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid settings in {where}: {problems}", op=_OP) from exc


def _first(*values: object) -> str | None:
    """First value that is set; an empty string counts as unset (``FOO= cmd``)."""
    for value in values:
        if value is not None and value != "":
            return str(value)
    return None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
