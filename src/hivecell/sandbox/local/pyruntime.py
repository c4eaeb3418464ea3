"""The host's Python, made visible inside a sandbox without exposing where it lives.

The guest agent runs on the host's interpreter and packages, bound read-only under
``/opt/hivecell`` so that the host's home, /root or the project folder never appear inside.
An interpreter under /usr (Debian's python3 + a uv venv) is already visible and used as is.
"""

from __future__ import annotations

import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import hivecell
from hivecell.errors import ConfigError

GUEST_ROOT = Path("/opt/hivecell")
VISIBLE = Path("/usr")  # bound read-only into every sandbox anyway


@dataclass(frozen=True)
class PythonRuntime:
    executable: str  # path inside the sandbox
    binds: list[tuple[str, str]] = field(default_factory=list)  # (host, sandbox), read-only
    pythonpath: list[str] = field(default_factory=list)
    library_path: str | None = None  # for interpreters linked to their own libpython

    @classmethod
    def detect(cls) -> PythonRuntime:
        binds: list[tuple[str, str]] = []
        base = Path(sys.base_prefix).resolve()
        prefix = _place(base, GUEST_ROOT / "python", binds)
        name = f"python{sys.version_info.major}.{sys.version_info.minor}"
        if not (base / "bin" / name).exists():
            raise ConfigError(f"no {name} under {base}/bin; hivecell needs a CPython install")
        dirs: dict[Path, str] = {}
        for host, guest_name in _import_dirs():
            dirs.setdefault(host, guest_name)  # a non-editable install has src == site-packages
        pythonpath = [str(_place(host, GUEST_ROOT / n, binds)) for host, n in dirs.items()]
        library = str(prefix / "lib") if prefix != base else None
        return cls(str(prefix / "bin" / name), binds, pythonpath, library)

    def guest_path(self, host: Path) -> str | None:
        """Where a host file appears inside the box; None if it is not visible there."""
        if host == VISIBLE or VISIBLE in host.parents:
            return str(host)
        for host_dir, guest_dir in self.binds:
            if Path(host_dir) in host.parents:
                return str(Path(guest_dir) / host.relative_to(host_dir))
        return None


def _place(host: Path, guest: Path, binds: list[tuple[str, str]]) -> Path:
    """Where ``host`` appears inside the sandbox, adding a bind unless it is already visible."""
    if host == VISIBLE or VISIBLE in host.parents:
        return host
    binds.append((str(host), str(guest)))
    return guest


def _import_dirs() -> list[tuple[Path, str]]:
    """(host folder, name under /opt/hivecell): the hivecell package's parent, then site dirs."""
    paths = sysconfig.get_paths()
    return [
        (Path(hivecell.__file__).resolve().parent.parent, "src"),
        (Path(paths["purelib"]).resolve(), "site-packages"),
        (Path(paths["platlib"]).resolve(), "platlib"),
    ]
