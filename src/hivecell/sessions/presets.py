"""Presets: several named agents with their instructions in one TOML file,
``$HIVECELL_HOME/presets/P.toml``, started at once by ``session create NAME --preset P`` as
sessions ``NAME-<member>``, each typed its instructions once it runs.

```toml
[[agents]]
name = "api"                 # the session becomes NAME-api
agent = "claude-code"
instructions = "Add input validation to the /users endpoint."
isolation = "worktree"       # optional, else the create's --isolation, else the agent's
model = "gpt-4.1"            # optional
```
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.errors import InvalidParams
from hivecell.protocol.jsonrpc import describe_validation
from hivecell.sessions.plugins import Isolation

_PRESET = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?", re.ASCII)


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?$")
    agent: str
    instructions: str = ""
    isolation: Isolation | None = None
    model: str | None = None


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[Member] = Field(min_length=1, max_length=32)


def load_preset(presets_dir: Path, name: str) -> Preset:
    if not _PRESET.fullmatch(name):
        raise InvalidParams(
            f"preset {name!r}: use lower-case letters, digits and hyphens", op="preset"
        )
    path = presets_dir / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        preset = Preset.model_validate(data)
    except FileNotFoundError:
        raise InvalidParams(f"no preset {path}: write it first", op="preset") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidParams(f"preset {path}: not valid TOML: {exc}", op="preset") from None
    except ValidationError as exc:
        raise InvalidParams(f"preset {path}: {describe_validation(exc)}", op="preset") from None
    names = [m.name for m in preset.agents]
    if len(set(names)) != len(names):
        raise InvalidParams(f"preset {path}: member names repeat", op="preset")
    return preset
