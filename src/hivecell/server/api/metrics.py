"""``/metrics``: Prometheus text format, behind the same token as the API."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from hivecell.server.api.deps import AUTH, State

router = APIRouter(tags=["server"], dependencies=AUTH)


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    body = await state.metrics.render(state.store, state.manager.counts(), state.sampler.totals())
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
