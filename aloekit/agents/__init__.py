"""Agent roles and the LLM backends they run on."""

from aloekit.agents.backends import BackendPool, ManagedClient, parse_spec, register_backend

__all__ = ["BackendPool", "ManagedClient", "parse_spec", "register_backend"]
