"""The provider ``kind``: read from config.toml, Anthropic's own defaults, one factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from hivecell.agent.llm import LLMClient, ProviderConfig, load_provider, make_model
from hivecell.agent.llm.claude import AnthropicClient
from hivecell.agent.llm.responses import ResponsesClient
from hivecell.errors import ConfigError

pytestmark = pytest.mark.anyio


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_kind_defaults_to_openai_chat_and_is_read_from_the_table(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "HIVECELL_MODEL": "gpt-4o"}
    default = load_provider(None, config_path=tmp_path / "none.toml", environ=env)
    assert default.kind == "openai-chat"
    config_path = write(
        tmp_path / "config.toml",
        '[providers.claude]\nkind = "anthropic"\nmodel = "claude-sonnet-4-5"\n',
    )
    claude = load_provider(
        "claude", config_path=config_path, environ={**env, "ANTHROPIC_API_KEY": "sk-ant"}
    )
    # Anthropic's URL and key variable, never OPENAI_API_KEY sent to Anthropic
    assert claude.kind == "anthropic" and claude.base_url == "https://api.anthropic.com"
    assert claude.api_key.get_secret_value() == "sk-ant"
    with pytest.raises(ConfigError, match="set ANTHROPIC_API_KEY"):
        load_provider("claude", config_path=config_path, environ=env)


def test_an_unknown_kind_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config_path = write(
        tmp_path / "config.toml", '[providers.x]\nkind = "gemini"\nmodel = "m"\napi_key = "k"\n'
    )
    with pytest.raises(ConfigError, match=r"\[providers.x\].*kind"):
        load_provider("x", config_path=config_path, environ={})


def config(kind: str) -> ProviderConfig:
    return ProviderConfig.model_validate(
        {"kind": kind, "base_url": "http://127.0.0.1:9", "api_key": SecretStr("k"), "model": "m"}
    )


async def test_make_model_picks_the_adapter_by_kind() -> None:
    async with make_model(config("openai-chat")) as chat:
        assert isinstance(chat, LLMClient)
    async with make_model(config("anthropic")) as claude:
        assert isinstance(claude, AnthropicClient)
    async with make_model(config("openai-responses")) as responses:
        assert isinstance(responses, ResponsesClient)
