"""The hivecell server: REST + WebSocket API over the task runtime, and the dashboard's host.

``create_app(ServerConfig(...))`` builds the ASGI app; ``hivecell up`` serves it with uvicorn.
"""
