"""A VM template for the qemu tests: built once per machine, cached under ~/.cache/hivecell.

The cache is keyed by what goes into a template (``template_key``: suite, packages, init
stub), so a fresh machine builds it (~2-4 min of mmdebstrap) and a changed package list
builds a new one; concurrent builders wait on the store's per-name lock and reuse what the
first one built. The guest agent is not in the template (it is on the guest disk, rebuilt
per hivecell version in a second), so code changes never invalidate this cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from hivecell.sandbox.qemu.provider import QemuProvider
from hivecell.sandbox.qemu.template import Template, TemplateStore, packages_for, template_key


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hivecell" / "templates"


def ci_template() -> Template:
    name = "ci-" + template_key(packages_for())[:12]
    return TemplateStore(cache_dir()).build(name, reuse=True)


def provider(home: Path, dns_servers: list[str] | None = None) -> QemuProvider:
    """A provider of VMs from the CI template, sharing the KVM probe and guest disk cache."""
    template = ci_template()
    return QemuProvider(
        home,
        template=template.manifest.name,
        templates_dir=template.root.parent,
        cache_dir=cache_dir().parent / "qemu",
        dns_servers=dns_servers,
    )
