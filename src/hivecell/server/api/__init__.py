"""REST and WebSocket routes under ``/api/v1``; every route requires the token."""
