"""aloekit: teach language models to infer a user's unspoken preferences by interacting (ALOE)."""

from aloekit.config import AloeConfig, BackendSettings, GenerationOptions, load_config
from aloekit.errors import AloeError, BackendError, ConfigError, SpecError, StoreError
from aloekit.store import Store

__version__ = "0.1.0"

__all__ = [
    "AloeConfig",
    "AloeError",
    "BackendError",
    "BackendSettings",
    "ConfigError",
    "GenerationOptions",
    "SpecError",
    "Store",
    "StoreError",
    "load_config",
]
