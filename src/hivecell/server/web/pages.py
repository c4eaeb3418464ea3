"""Page routes: one layout, one body per page, the login page for visitors without the token.

Pages are the same for everyone (data arrives through the API), so they are read once at start.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from hivecell.errors import Unauthenticated
from hivecell.server import auth
from hivecell.server.app import ServerState

PAGES = Path(__file__).parent / "pages"
TITLES = {
    "dashboard": "Dashboard",
    "task": "Task",
    "crews": "Crews",
    "crew": "Crew",
    "environments": "Environments",
    "sessions": "Sessions",
    "settings": "Settings",
    "login": "Log in",
}
# Every script, style, image and socket comes from this server; API text can never run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}  # fmt: skip
# xterm.js sizes and colours its rows with <style> elements and style attributes it writes at
# run time, which 'self' alone refuses. Only styles are loosened, only on this page: scripts
# stay 'self', terminal output is drawn as text, and API text is still never markup.
TERMINAL_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
PAGE_HEADERS = {"sessions": HEADERS | {"Content-Security-Policy": TERMINAL_CSP}}


def render(page: str) -> str:
    layout = (PAGES / ("login.html" if page == "login" else "layout.html")).read_text()
    body = "" if page == "login" else (PAGES / f"{page}.html").read_text()
    return (
        layout.replace("{{title}}", TITLES[page])
        .replace("{{page}}", page)
        .replace("{{body}}", body)
    )


def pages_router(state: ServerState) -> APIRouter:
    html = {page: render(page) for page in TITLES}
    router = APIRouter(include_in_schema=False)

    def page(name: str, request: Request) -> Response:
        try:
            auth.check(request, state.config.token)
        except Unauthenticated:
            # A token that was given but not accepted by the middleware was wrong.
            failed = "?failed=1" if "token" in request.query_params else ""
            return RedirectResponse(f"/login{failed}", status_code=303)
        return HTMLResponse(html[name], headers=PAGE_HEADERS.get(name, HEADERS))

    @router.get("/")
    async def dashboard(request: Request) -> Response:
        return page("dashboard", request)

    @router.get("/tasks/{task_id}")
    async def task(request: Request, task_id: str) -> Response:
        return page("task", request)

    @router.get("/crews")
    async def crews(request: Request) -> Response:
        return page("crews", request)

    @router.get("/crews/{crew_id}")
    async def crew(request: Request, crew_id: str) -> Response:
        return page("crew", request)

    @router.get("/environments")
    async def environments(request: Request) -> Response:
        return page("environments", request)

    @router.get("/sessions")
    async def sessions(request: Request) -> Response:
        return page("sessions", request)

    @router.get("/settings")
    async def settings(request: Request) -> Response:
        return page("settings", request)

    @router.get("/login")
    async def login() -> Response:
        return HTMLResponse(html["login"], headers=HEADERS)

    return router
