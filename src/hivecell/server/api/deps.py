"""Dependencies every route shares: the server state and the token check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from hivecell.server import auth
from hivecell.server.app import ServerState


def get_state(conn: HTTPConnection) -> ServerState:
    state: ServerState = conn.app.state.hivecell
    return state


def require_auth(conn: HTTPConnection) -> None:
    auth.check(conn, get_state(conn).config.token)


State = Annotated[ServerState, Depends(get_state)]
AUTH = [Depends(require_auth)]
