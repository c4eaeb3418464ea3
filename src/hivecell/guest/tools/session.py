"""Guest tools: liveness, agent info, health, system facts, shutdown."""

from __future__ import annotations

import fcntl
import functools
import os
import platform
import shutil
import socket
import struct
import time
from pathlib import Path

import anyio

import hivecell
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.protocol import methods as m

router = Router()
_BOOT = time.monotonic()
_SIOCGIFADDR = 0x8915
_SIOCGIFFLAGS = 0x8913


@router.method("ping")
async def ping(p: m.Empty, ctx: CallContext) -> m.PingResult:
    return m.PingResult(time=time.time())


@router.method("get_agent_info")
async def get_agent_info(p: m.Empty, ctx: CallContext) -> m.AgentInfo:
    rules = ctx.config.policy
    served = [n for n in ctx.services.method_names if rules is None or rules.serves(n)]
    tools = list(_tool_specs(tuple(served)))
    return m.AgentInfo(
        version=hivecell.__version__,
        protocol_version=m.PROTOCOL_VERSION,
        capabilities=sorted(
            {
                "cancel",
                "heartbeat",
                "exec.stream",
                "screenshot.png",
                "screenshot.jpeg",
                "screenshot.webp",
                "vnc",
            }
        ),
        tools=tools,
    )


@functools.cache
def _tool_specs(names: tuple[str, ...]) -> tuple[m.ToolSpec, ...]:
    """Built once: the schemas cost ~60 ms of event loop per call, which any peer could
    repeat to stall the agent."""
    return tuple(_tool_spec(m.METHODS[name]) for name in names)


def _tool_spec(spec: m.MethodSpec) -> m.ToolSpec:
    return m.ToolSpec(
        name=spec.name,
        description=spec.description,
        params_schema=spec.params.model_json_schema(),
        result_schema=spec.result.model_json_schema(),
    )


@router.method("health_check")
async def health_check(p: m.Empty, ctx: CallContext) -> m.HealthResult:
    checks = {
        "display": await _check_display(ctx),
        "input": await _check_input(ctx),
        "shared_folder": _check_shared(ctx),
        "clipboard": _check_clipboard(),
    }
    return m.HealthResult(healthy=all(c.ok for c in checks.values()), checks=checks)


async def _check_display(ctx: CallContext) -> m.CheckResult:
    try:
        width, height = await ctx.services.x.screen_size()
    except Exception as exc:
        return m.CheckResult(ok=False, detail=f"X display unavailable: {exc}")
    return m.CheckResult(ok=True, detail=f"{width}x{height}")


async def _check_input(ctx: CallContext) -> m.CheckResult:
    try:
        ok = await ctx.services.x.has_xtest()
    except Exception as exc:
        return m.CheckResult(ok=False, detail=f"X display unavailable: {exc}")
    return m.CheckResult(ok=ok, detail="XTest" if ok else "XTEST extension missing on the display")


def _check_shared(ctx: CallContext) -> m.CheckResult:
    shared = ctx.config.roots[0] if ctx.config.roots else Path("/shared")
    missing = [d for d in ("inbox", "outbox", "workspace") if not (shared / d).is_dir()]
    if missing:
        return m.CheckResult(ok=False, detail=f"missing under {shared}: {', '.join(missing)}")
    writable = os.access(shared / "outbox", os.W_OK)
    return m.CheckResult(ok=writable, detail=str(shared) if writable else "outbox not writable")


def _check_clipboard() -> m.CheckResult:
    found = shutil.which("xclip")
    return m.CheckResult(ok=bool(found), detail=found or "xclip not installed (apt install xclip)")


@router.method("get_system_info")
async def get_system_info(p: m.Empty, ctx: CallContext) -> m.SystemInfo:
    total, available = _meminfo()
    uname = platform.uname()
    return m.SystemInfo(
        hostname=socket.gethostname(),
        os=_os_name(),
        kernel=uname.release,
        arch=uname.machine,
        cpu_count=os.cpu_count() or 1,
        memory_total=total,
        memory_available=available,
        uptime_s=time.monotonic() - _BOOT,
        user=_user_name(),
        home=str(Path.home()),
        python=platform.python_version(),
    )


def _meminfo() -> tuple[int, int]:
    values: dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return "Linux"


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


@router.method("get_network_info")
async def get_network_info(p: m.Empty, ctx: CallContext) -> m.NetworkInfo:
    interfaces = [_interface(name) for _, name in socket.if_nameindex()]
    return m.NetworkInfo(interfaces=interfaces, has_default_route=_has_default_route())


def _interface(name: str) -> m.InterfaceInfo:
    return m.InterfaceInfo(name=name, up=_is_up(name), addresses=_addresses(name))


def _is_up(name: str) -> bool:
    """IFF_UP via the SIOCGIFFLAGS ioctl: sandboxes have no /sys to read it from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return False
    return bool(struct.unpack_from("H", packed, 16)[0] & 1)


def _addresses(name: str) -> list[str]:
    """IPv4 address via the SIOCGIFADDR ioctl: no `ip` binary needed inside the box."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return []
    return [socket.inet_ntoa(packed[20:24])]


def _has_default_route() -> bool:
    try:
        with open("/proc/net/route") as fh:
            return any(line.split()[1] == "00000000" for line in list(fh)[1:] if line.split())
    except OSError:
        return False


@router.method("get_disk_usage")
async def get_disk_usage(p: m.DiskUsageParams, ctx: CallContext) -> m.DiskUsage:
    from hivecell.guest.paths import resolve

    path = resolve(p.path, ctx.config.roots, op="get_disk_usage")
    usage = shutil.disk_usage(path)
    return m.DiskUsage(path=str(path), total=usage.total, used=usage.used, free=usage.free)


@router.method("shutdown")
async def shutdown(p: m.Empty, ctx: CallContext) -> m.Ok:
    ctx.services.request_stop("shutdown")
    return m.Ok()


@router.method("reboot")
async def reboot(p: m.Empty, ctx: CallContext) -> m.Ok:
    ctx.services.request_stop("reboot")
    return m.Ok()


@router.method("wait")
async def wait(p: m.WaitParams, ctx: CallContext) -> m.WaitResult:
    start = time.perf_counter()
    await anyio.sleep(p.seconds)
    return m.WaitResult(waited_ms=(time.perf_counter() - start) * 1000)
