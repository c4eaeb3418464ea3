"""hivecell as an MCP server: sandboxes and agent tasks as tools for any MCP client.

Built on the official ``mcp`` SDK (``MCPServer``); ``hivecell mcp`` serves it over stdio and
``hivecell up`` over Streamable HTTP at ``/mcp``. See docs/mcp.md.
"""
