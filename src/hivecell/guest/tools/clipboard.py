"""Guest tools: the CLIPBOARD selection, through the xclip binary.

X selections are owned by a live client that answers requests, so writing means leaving a
process behind: xclip forks and its child stays the owner until another client takes over.
"""

from __future__ import annotations

import shutil
import subprocess

import anyio
from Xlib import X

from hivecell.errors import NotSupported, Timeout, ToolFailed
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.guest.x11 import XSession, display_env
from hivecell.protocol import methods as m

router = Router()
XCLIP_TIMEOUT_S = 5.0
_EMPTY_MARKERS = ("not available", "no owner")  # xclip's words for "nothing to paste"


@router.method("clipboard_read")
async def clipboard_read(p: m.Empty, ctx: CallContext) -> m.ClipboardText:
    argv = [_xclip(), "-selection", "clipboard", "-o", "-t", "UTF8_STRING"]
    try:
        with anyio.fail_after(XCLIP_TIMEOUT_S):
            done = await anyio.run_process(argv, check=False, env=_env(ctx))
    except TimeoutError:
        raise _timeout("read") from None
    if done.returncode == 0:
        return m.ClipboardText(text=done.stdout.decode("utf-8", "replace"))
    error = done.stderr.decode("utf-8", "replace").strip()
    if any(marker in error.lower() for marker in _EMPTY_MARKERS):
        return m.ClipboardText(text="")
    raise ToolFailed(f"xclip could not read the clipboard (exit {done.returncode}): {error}")


@router.method("clipboard_write")
async def clipboard_write(p: m.ClipboardWriteParams, ctx: CallContext) -> m.Ok:
    argv = [_xclip(), "-selection", "clipboard", "-i"]
    x = ctx.services.x
    before = await x.run(_owner, x)
    try:
        with anyio.fail_after(XCLIP_TIMEOUT_S):
            code = await _feed(argv, p.text.encode("utf-8"), ctx)
            if code == 0:
                await _until_owner_changes(x, before)
    except TimeoutError:
        raise _timeout("write") from None
    if code != 0:
        raise ToolFailed(f"xclip could not set the clipboard (exit {code}); check DISPLAY")
    return m.Ok()


def _owner(x: XSession) -> int:
    owner = x.display.get_selection_owner(x.display.intern_atom("CLIPBOARD"))
    return int(getattr(owner, "id", owner))


async def _until_owner_changes(x: XSession, before: int) -> None:
    """xclip's parent exits before its forked child owns the selection: a read right
    after the write could still get the old text."""
    while True:
        owner = await x.run(_owner, x)
        if owner not in (before, X.NONE):
            return
        await anyio.sleep(0.002)


async def _feed(argv: list[str], data: bytes, ctx: CallContext) -> int:
    # stdout and stderr must not be pipes: the forked owner keeps them open, and waiting
    # for their end would wait until someone else takes the clipboard.
    async with await anyio.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=_env(ctx),
    ) as process:  # fmt: skip
        assert process.stdin is not None
        await process.stdin.send(data)
        await process.stdin.aclose()
        return await process.wait()


def _xclip() -> str:
    found = shutil.which("xclip")
    if found is None:
        raise NotSupported("xclip is not installed in the sandbox (apt install xclip)")
    return found


def _env(ctx: CallContext) -> dict[str, str]:
    return display_env(ctx.config.display, ctx.config.env)


def _timeout(action: str) -> Timeout:
    return Timeout(
        f"xclip did not {action} the clipboard within {XCLIP_TIMEOUT_S:g} s; the app owning "
        "the clipboard may be hung, copy again from a responsive app",
        retryable=True,
    )
