"""Sandboxes kept ready and measured: the warm pool, host capacity and per-sandbox metrics."""
