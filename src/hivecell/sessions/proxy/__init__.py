"""The model proxy: a session's agent reaches its model without holding the key.

- ``gate``: runs first in the agent's place (in its box, its mount namespace or on the host):
  listens on a loopback port there, points the agent's own variables at it
  (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``, ... from the agent definition) and relays each
  connection to the session's unix socket, then becomes the agent.
- ``host``: the server end of those sockets, one per session under
  ``HOME/sessions/NAME/proxy/``; which session is asking is which socket it came in on.
- ``relay``: one HTTP/1.1 connection: allowed model routes only, the provider's key added,
  streamed through, tokens and cost counted (``usage``) against the session's budget.
"""
