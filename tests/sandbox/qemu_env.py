"""A VM template for the qemu tests: built once per machine, cached under ~/.cache/hivecell.

The cache is keyed by what goes into a template (``template_key``: suite, packages, init
stub), so a fresh machine builds it (~2-4 min of mmdebstrap) and a changed package list
builds a new one; concurrent builders wait on the store's per-name lock and reuse what the
first one built. The guest agent is not in the template (it is on the guest disk, rebuilt
per hivecell version in a second), so code changes never invalidate this cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

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


def as_users_default(home: Path) -> Template:
    """``home`` as a user's after ``hivecell template build``: its ``default`` template is
    the CI one (a link: no second build; its warm states are shared), and it shares the KVM
    probe's answer and the guest disk. Returns the template."""
    template = ci_template()
    (home / "templates").mkdir(exist_ok=True)
    (home / "templates" / "default").symlink_to(template.root)
    shared = cache_dir().parent / "qemu"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "qemu").symlink_to(shared)
    return template


@contextlib.contextmanager
def scratch_home(prefix: str) -> Iterator[Path]:
    """A short home under /tmp (unix socket paths), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def vms(home: Path) -> AsyncIterator[QemuProvider]:
    """``provider(home)``; every VM still there at the end is destroyed."""
    made = await anyio.to_thread.run_sync(provider, home)
    try:
        yield made
    finally:
        for info in await made.list():
            await made.destroy(info.id)
