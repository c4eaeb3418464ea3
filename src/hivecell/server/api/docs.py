"""The API's own description, for people holding the token.

``/openapi.json`` is the schema. ``/docs`` and ``/redoc`` point at it instead of rendering
Swagger UI or ReDoc: both would load third-party code from a CDN into the origin whose cookie
drives every sandbox, and vendoring ~1.5 MB of UI for a schema viewer is not worth that
surface. docs/api.md is the human reference.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse

from hivecell.server.api.deps import AUTH

router = APIRouter(include_in_schema=False, dependencies=AUTH)


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    schema: dict[str, Any] = request.app.openapi()
    return JSONResponse(schema, headers={"Cache-Control": "no-store"})


@router.get("/docs")
@router.get("/redoc")
async def docs() -> RedirectResponse:
    return RedirectResponse("/openapi.json", status_code=303)
