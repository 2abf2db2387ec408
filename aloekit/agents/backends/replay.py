"""``replay:FILE``: answers read from a JSON file, returned in order (for tests and docs)."""

from __future__ import annotations

import json
from pathlib import Path

from autogen_core.models import ChatCompletionClient

from aloekit.agents.backends.registry import BackendSpec, register_backend
from aloekit.config import BackendSettings
from aloekit.errors import BackendError


def load_replay_file(path: Path) -> list[str]:
    """Read answers from ``["a", "b"]`` or ``{"responses": ["a", "b"]}``."""
    if not path.is_file():
        raise BackendError(f"replay file {path}: not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BackendError(f"replay file {path}: invalid JSON: {exc}") from None
    responses = data.get("responses") if isinstance(data, dict) else data
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise BackendError(f'replay file {path}: expected a list of strings or {{"responses": [...]}}')
    if not responses:
        raise BackendError(f"replay file {path}: no responses")
    return responses


@register_backend("replay", description="scripted answers from a JSON file, in order", example="replay:answers.json")
def build_replay_client(spec: BackendSpec, settings: BackendSettings) -> ChatCompletionClient:
    """autogen's ``ReplayChatCompletionClient`` over the file's answers."""
    from autogen_ext.models.replay import ReplayChatCompletionClient

    return ReplayChatCompletionClient(load_replay_file(Path(spec.target)))
