"""The dashboard: HTML pages, their ES modules and CSS, the vendored libraries, the VNC relay.

``install`` is the installer ``create_app`` calls. Pages are static shells filled in by the
browser from the REST API and ``/api/v1/events``; nothing the API returns is rendered on the
server, so escaping happens in one place (``assets/js/dom.js`` builds text nodes only).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from hivecell.server.api.deps import AUTH
from hivecell.server.app import ServerState
from hivecell.server.vnc import provider_resolver, vnc_router
from hivecell.server.web.pages import pages_router

HERE = Path(__file__).parent
STATIC = HERE.parent / "static"


def install(app: FastAPI, state: ServerState) -> None:
    app.include_router(
        # late-bound: the task manager exists only once the app's lifespan has started
        vnc_router(
            provider_resolver(state.provider),
            AUTH,
            may_drive=lambda sandbox_id: state.manager.may_drive(sandbox_id),
        )
    )
    app.include_router(pages_router(state))
    # Static files carry no secrets (the same for every install), so they need no token:
    # the login page uses them too.
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/assets", StaticFiles(directory=HERE / "assets"), name="assets")
