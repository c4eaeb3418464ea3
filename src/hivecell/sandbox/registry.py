"""Sandbox providers by name: what ``--provider`` and the config file refer to."""

from __future__ import annotations

import importlib
from pathlib import Path

from hivecell.errors import ConfigError
from hivecell.sandbox.base import SandboxProvider

# name -> "module:class", imported on demand so unused providers cost nothing
PROVIDERS = {
    "local": "hivecell.sandbox.local.provider:LocalProvider",
    "qemu": "hivecell.sandbox.qemu.provider:QemuProvider",
}


def get_provider(name: str, home: Path) -> SandboxProvider:
    """The provider called ``name``, keeping its state under ``home``."""
    target = PROVIDERS.get(name)
    if target is None:
        raise ConfigError(
            f"unknown sandbox provider {name!r}; available: {', '.join(sorted(PROVIDERS))}",
            op="get_provider",
            context={"name": name, "available": sorted(PROVIDERS)},
        )
    module_name, _, class_name = target.partition(":")
    provider_class = getattr(importlib.import_module(module_name), class_name)
    provider: SandboxProvider = provider_class(home)
    return provider
