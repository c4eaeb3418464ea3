"""``hivecell session audit NAME [--follow] [--json]``: pages of ``GET
/sessions/{name}/audit``, printed as they come."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from hivecell.cli.common import out

if TYPE_CHECKING:
    from hivecell.cli.session import Server

FOLLOW_POLL = 0.5


def print_audit(srv: Server, name: str, *, follow: bool, as_json: bool) -> None:
    after = 0
    while True:
        page = srv.call("GET", f"/sessions/{name}/audit", params={"after": after}).json()
        for entry in page["items"]:
            _print(entry, as_json)
        after = page["next_after"]
        if page["more"]:
            continue
        if not follow:
            return
        time.sleep(FOLLOW_POLL)  # a person watching: half a second is soon enough


def _print(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(entry), flush=True)
        return
    detail = entry.get("detail") or {}
    # JSON-quoted: a typed escape sequence shows as \u001b, it never drives this terminal.
    extra = " ".join(f"{k}={json.dumps(v)}" for k, v in detail.items())
    target = json.dumps(entry["target"]) if entry["target"] is not None else ""
    line = f"{entry['timestamp']} {entry['action']:<16} {entry['outcome']:<8} {target} {extra}"
    out.print(
        line.rstrip(),
        highlight=False,
        markup=False,
    )
