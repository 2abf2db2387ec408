"""LLM backends: autogen ``ChatCompletionClient``s chosen by a spec string such as ``local:smollm2``."""

from aloekit.agents.backends.local import TransformersChatClient, converted_model_dir, find_smollm2_gguf
from aloekit.agents.backends.managed import Budget, ManagedClient, RoleUsage, UsageLedger, is_retryable
from aloekit.agents.backends.messages import from_dicts, to_dicts
from aloekit.agents.backends.pool import BackendPool
from aloekit.agents.backends.registry import (
    Backend,
    BackendSpec,
    SpecCheck,
    check_spec,
    get_backend,
    list_backends,
    parse_spec,
    register_backend,
)

__all__ = [
    "Backend",
    "Budget",
    "BackendPool",
    "BackendSpec",
    "ManagedClient",
    "RoleUsage",
    "SpecCheck",
    "TransformersChatClient",
    "UsageLedger",
    "check_spec",
    "converted_model_dir",
    "find_smollm2_gguf",
    "from_dicts",
    "get_backend",
    "is_retryable",
    "list_backends",
    "parse_spec",
    "register_backend",
    "to_dicts",
]
