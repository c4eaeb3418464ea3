"""What the supervisor's request socket accepts (ops.py), in a module of its own: the
supervisor imports pydantic for it only once a request comes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class SaveRequest(BaseModel):
    """Write the VM's state (and a copy of its disk) at one moment."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["save"]
    state: str
    disk: str | None = None
    then: Literal["resume", "quit"] = "resume"
    drop_caches: bool = False
