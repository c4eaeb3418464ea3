"""Coding-agent sessions: agent CLIs in pseudo-terminals, each owned by its own supervisor.

``plugins`` knows the agents, ``names`` what a session may be called, ``framing`` the bytes
on the attach WebSocket and the supervisor socket, ``supervisor`` the process that owns one
PTY, ``service`` what the server does with them (create, list, send, restart, destroy).
"""
