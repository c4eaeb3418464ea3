"""Agent plugins: built-ins, custom TOML files, detection with a version, ``agents ls``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivecell.errors import InvalidParams
from hivecell.sessions.detect import detect
from hivecell.sessions.plugins import BUILTIN_IDS, BUILTINS, AgentDef, get_agent, load_agents


def test_every_seed_id_is_built_in_and_aider_starts_unattended() -> None:
    assert set(BUILTINS) == set(BUILTIN_IDS)
    assert BUILTINS["aider"].argv("gpt-x") == [
        "aider",
        "--model",
        "openai/gpt-x",
        "--yes-always",
        "--no-check-update",
        "--no-show-model-warnings",
        "--no-analytics",
    ]
    with pytest.raises(InvalidParams, match="--model"):
        BUILTINS["aider"].argv(None)


def test_custom_agent_from_toml_and_its_id(tmp_path: Path) -> None:
    (tmp_path / "py.toml").write_text(
        'command = "python3"\nargs = ["-q"]\ncheck_command = ["python3", "--version"]\n'
        '[defaults]\nisolation = "worktree"\nenvironment = { A = "{model}" }\n'
        '[hooks]\non_start = "true"\n[screen]\nwaiting = ["\\\\?$"]\n'
    )
    agents = load_agents(tmp_path)
    custom = agents["custom/py"]
    assert custom.defaults.isolation == "worktree"
    assert custom.environment("m1") == {"A": "m1"}
    assert custom.hooks.on_start == "true"
    found = detect(custom, os.environ["PATH"])
    assert found.installed and found.version and found.version.startswith("Python 3")


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("bad.toml", 'command = "x"\nbogus = 1\n', "bogus"),
        ("bad.toml", 'id = "shell"\ncommand = "x"\n', "custom/bad"),
        ("bad.toml", "command = [", "not valid TOML"),
        ("bad.toml", 'command = "x"\n[screen]\nwaiting = ["("]\n', "pattern"),
        (
            "bad.toml",
            'command = "x"\n[[screen.auto_answer]]\npattern = "[y"\nkeys = "y"\n',
            "pattern",
        ),
        ("bad.toml", 'command = "x"\n[[screen.auto_answer]]\npattern = "ok"\n', "keys"),
        ("Bad_Name.toml", 'command = "x"\n', "name the file"),
    ],
)
def test_bad_agent_files_are_refused_naming_the_file(
    tmp_path: Path, name: str, text: str, why: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(InvalidParams, match=why) as caught:
        load_agents(tmp_path)
    assert name in str(caught.value)


def test_detection_missing_failing_and_hanging_commands(tmp_path: Path) -> None:
    missing = AgentDef(id="custom/m", name="m", command="no-such-agent-cli-xyz")
    assert detect(missing, os.environ["PATH"]).installed is False
    failing = AgentDef(id="custom/f", name="f", command="false", check_command=["false"])
    assert detect(failing, os.environ["PATH"]).problem == "check exit 1"
    hang = AgentDef(id="custom/h", name="h", command="sleep", check_command=["sleep", "30"])
    found = detect(hang, os.environ["PATH"], timeout=0.5)
    assert found.installed is False and "timed out" in (found.problem or "")


def test_unknown_agent_lists_the_known_ones() -> None:
    with pytest.raises(InvalidParams, match="claude-code"):
        get_agent(dict(BUILTINS), "nope")


def test_agents_ls_json_shows_bash_installed_with_version(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hivecell.cli.main",
            "agents",
            "ls",
            "--json",
            "--home",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["id"]: row for row in json.loads(done.stdout)}
    assert set(BUILTIN_IDS) <= set(rows)
    assert rows["shell"]["installed"] is True
    assert "bash" in rows["shell"]["version"]
    assert rows["claude-code"]["install"].startswith("npm install")
