"""``openai:MODEL`` and ``openai:BASE_URL#MODEL``: OpenAI and any OpenAI-compatible server."""

from __future__ import annotations

from autogen_core.models import ChatCompletionClient, ModelInfo

from aloekit.agents.backends.registry import BackendSpec, register_backend
from aloekit.config import BackendSettings
from aloekit.errors import BackendError, SpecError
from aloekit.secrets import read_secret

# Servers such as vLLM, SGLang, Ollama and llama.cpp accept any key; the SDK insists on one.
_NO_KEY_PLACEHOLDER = "no-key-required"
_GENERIC_MODEL_INFO = ModelInfo(
    vision=False, function_calling=False, json_output=False, family="unknown", structured_output=False
)


def split_openai_target(target: str) -> tuple[str | None, str]:
    """Split ``BASE_URL#MODEL`` (or a bare ``MODEL``) into (base_url or None, model)."""
    if target.startswith(("http://", "https://")):
        base_url, sep, model = target.partition("#")
        if not sep or not model:
            raise SpecError(
                f"malformed openai spec 'openai:{target}': a server URL needs the model after '#', "
                "e.g. openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct"
            )
        return base_url.rstrip("/"), model
    if "#" in target:
        raise SpecError(f"malformed openai spec 'openai:{target}': a server URL must start with http:// or https://")
    return None, target


def _model_info(model: str) -> ModelInfo | None:
    from autogen_ext.models.openai._model_info import get_info

    try:
        get_info(model)
        return None  # autogen knows this OpenAI model; let it fill in the details
    except (KeyError, ValueError):
        return _GENERIC_MODEL_INFO


@register_backend(
    "openai",
    description="OpenAI, or any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp server)",
    example="openai:gpt-4o-mini  |  openai:http://127.0.0.1:8000/v1#served-model",
)
def build_openai_client(spec: BackendSpec, settings: BackendSettings) -> ChatCompletionClient:
    """autogen-ext's OpenAI client; retries are ours (SDK retries off), the key comes from the env."""
    try:
        from autogen_ext.models.openai import OpenAIChatCompletionClient
    except ImportError as exc:
        raise BackendError(
            f"{spec.text}: the openai backend needs autogen-ext[openai]: pip install 'autogen-ext[openai]'"
        ) from exc
    base_url, model = split_openai_target(spec.target)
    api_key = read_secret(settings.api_key_env)
    if api_key is None:
        if base_url is None:
            raise BackendError(f"{spec.text}: set {settings.api_key_env} to call the OpenAI API")
        api_key = _NO_KEY_PLACEHOLDER
    kwargs = {"model": model, "api_key": api_key, "timeout": settings.timeout_s, "max_retries": 0}
    if base_url is not None:
        kwargs["base_url"] = base_url
        kwargs["model_info"] = _GENERIC_MODEL_INFO  # a server's model names are not OpenAI's
    elif (info := _model_info(model)) is not None:
        kwargs["model_info"] = info
    return OpenAIChatCompletionClient(**kwargs)
