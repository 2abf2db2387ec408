"""``replay:FILE``: answers read from a JSON file, returned in order (for tests and docs)."""

from __future__ import annotations

from pathlib import Path

from autogen_core.models import ChatCompletionClient

from aloekit.agents.backends.files import read_json_file
from aloekit.agents.backends.registry import BackendSpec, register_backend
from aloekit.config import BackendSettings
from aloekit.errors import BackendError


def load_replay_file(path: Path) -> list[str]:
    """Read answers from ``["a", "b"]`` or ``{"responses": ["a", "b"]}``."""
    if path.is_dir():
        raise BackendError(f"replay file {path}: is a folder, not a JSON file")
    data = read_json_file(path, f"replay file {path}")
    responses = data.get("responses") if isinstance(data, dict) else data
    if not isinstance(responses, list):
        raise BackendError(f'replay file {path}: expected a list of strings or {{"responses": [...]}}')
    for index, response in enumerate(responses):
        if not isinstance(response, str):
            raise BackendError(
                f"replay file {path}: expected a list of strings, but response {index} is {type(response).__name__}"
            )
    if not responses:
        raise BackendError(f"replay file {path}: no responses")
    return responses


def check_replay_spec(spec: BackendSpec, settings: BackendSettings) -> None:
    """The file exists and holds a non-empty list of answers (reading it is cheap)."""
    load_replay_file(Path(spec.target))


@register_backend(
    "replay",
    description="scripted answers from a JSON file, in order",
    example="replay:answers.json",
    check=check_replay_spec,
)
def build_replay_client(spec: BackendSpec, settings: BackendSettings) -> ChatCompletionClient:
    """autogen's ``ReplayChatCompletionClient`` over the file's answers."""
    from autogen_ext.models.replay import ReplayChatCompletionClient

    return ReplayChatCompletionClient(load_replay_file(Path(spec.target)))
