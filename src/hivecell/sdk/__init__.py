"""Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox``."""
