"""The agent runtime: the model client, the agent loop and its live control."""
