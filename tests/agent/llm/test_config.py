"""Provider settings: argument > config file > environment > error naming all three."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.agent.llm import DEFAULT_BASE_URL, load_provider
from hivecell.errors import ConfigError

CONFIG = """
default_provider = "work"

[prices."house-1"]
input = 1.0
output = 2.0

[providers.work]
base_url = "https://llm.example.test/v1"
api_key = "file-key"
model = "file-model"
max_retries = 2

[providers.local]
base_url = "http://127.0.0.1:11434/v1/"
model = "qwen2.5vl:7b"

[providers.vendor]
base_url = "https://vendor.example.test/v1"
model = "v-1"
api_key_env = "VENDOR_API_KEY"

[providers.vendor.prices."v-1"]
input = 0.5
output = 1.5
"""

ENV = {
    "OPENAI_BASE_URL": "https://env.example.test/v1",
    "OPENAI_API_KEY": "env-key",
    "HIVECELL_MODEL": "env-model",
}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def test_arguments_beat_the_file_which_beats_the_environment(config_path: Path) -> None:
    from_file = load_provider("work", config_path=config_path, environ=ENV)
    assert (from_file.base_url, from_file.model) == ("https://llm.example.test/v1", "file-model")
    assert from_file.api_key.get_secret_value() == "file-key" and from_file.max_retries == 2
    from_args = load_provider(
        "work",
        model="arg-model",
        base_url="http://10.9.8.7:8000/v1",
        api_key="arg-key",
        config_path=config_path,
        environ=ENV,
    )
    assert (from_args.base_url, from_args.model) == ("http://10.9.8.7:8000/v1", "arg-model")
    assert from_args.api_key.get_secret_value() == "arg-key"


def test_environment_fills_what_nothing_else_sets(tmp_path: Path) -> None:
    config = load_provider(None, config_path=tmp_path / "absent.toml", environ=ENV)
    assert (config.base_url, config.model, config.name) == (
        "https://env.example.test/v1",
        "env-model",
        "environment",
    )
    assert config.api_key.get_secret_value() == "env-key"
    assert config.max_retries == 5 and config.timeout_s == 120


def test_default_provider_and_openai_default_url(config_path: Path, tmp_path: Path) -> None:
    assert load_provider(None, config_path=config_path, environ={}).name == "work"
    bare = load_provider(
        None,
        config_path=tmp_path / "none.toml",
        environ={"OPENAI_API_KEY": "k", "HIVECELL_MODEL": "gpt-4o"},
    )
    assert bare.base_url == DEFAULT_BASE_URL


def test_missing_key_names_flag_variable_and_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    with pytest.raises(ConfigError) as caught:
        load_provider(None, model="gpt-4o", config_path=path, environ={"OPENAI_API_KEY": ""})
    message = str(caught.value)
    assert "--api-key" in message and "OPENAI_API_KEY" in message and str(path) in message
    assert caught.value.code == "config_error"


def test_missing_model_names_flag_and_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_provider(None, api_key="k", config_path=tmp_path / "c.toml", environ={})
    assert "--model" in str(caught.value) and "HIVECELL_MODEL" in str(caught.value)


def test_loopback_servers_need_no_key(config_path: Path) -> None:
    config = load_provider("local", config_path=config_path, environ={})
    assert config.api_key.get_secret_value() == "local"
    assert config.base_url == "http://127.0.0.1:11434/v1"
    remote = {"OPENAI_BASE_URL": "http://192.168.1.20:8000/v1", "HIVECELL_MODEL": "m"}
    with pytest.raises(ConfigError, match="no API key"):
        load_provider(None, config_path=config_path.with_name("x.toml"), environ=remote)


def test_api_key_env_replaces_openai_api_key(config_path: Path) -> None:
    config = load_provider(
        "vendor", config_path=config_path, environ={**ENV, "VENDOR_API_KEY": "v"}
    )
    assert config.api_key.get_secret_value() == "v"
    assert set(config.prices) == {"house-1", "v-1"}
    with pytest.raises(ConfigError) as caught:  # OPENAI_API_KEY is never sent to the vendor
        load_provider("vendor", config_path=config_path, environ=ENV)
    assert "VENDOR_API_KEY" in str(caught.value)


def test_unknown_provider_lists_the_defined_ones(config_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_provider("nope", config_path=config_path, environ=ENV)
    assert "[providers.nope]" in str(caught.value) and "local, vendor, work" in str(caught.value)


def test_bad_files_and_values_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[providers.x\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_provider("x", config_path=path, environ=ENV)
    path.write_text('[providers.x]\nmodel = "m"\napi_key = "k"\nretries = 3\n')
    with pytest.raises(ConfigError, match=r"\[providers.x\].*retries"):
        load_provider("x", config_path=path, environ={})
    with pytest.raises(ConfigError, match="--base-url"):
        load_provider(None, base_url="localhost:8000", config_path=path, environ=ENV)
