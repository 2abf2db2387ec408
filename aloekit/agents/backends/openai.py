"""``openai:MODEL`` and ``openai:BASE_URL#MODEL``: OpenAI and any OpenAI-compatible server."""

from __future__ import annotations

import functools
import importlib.util
import urllib.parse
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from autogen_core.models import ChatCompletionClient, CreateResult, LLMMessage, ModelInfo

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
        try:
            parsed = urllib.parse.urlsplit(base_url)
            parsed.port  # noqa: B018 - raises on a port out of range or not a number
        except ValueError as exc:
            raise SpecError(f"malformed openai spec 'openai:{target}': {exc}") from None
        if not parsed.hostname:
            raise SpecError(f"malformed openai spec 'openai:{target}': the server URL has no host")
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


# Options that are not OpenAI API parameters: they go into the request body where a server reads them.
_SERVER_OPTIONS = ("repetition_penalty",)


def translate_create_args(args: Mapping[str, Any], *, server: bool, guided_choice: str) -> dict[str, Any]:
    """Move options the OpenAI SDK does not know into ``extra_body`` the way vLLM and SGLang read them.

    ``guided_choice`` becomes vLLM's ``guided_choice`` field (or ``structured_outputs.choice``), or,
    in ``logprobs`` mode (the default for the OpenAI API, which rejects unknown fields), is dropped: the
    caller then reads the answer from the first token's ``top_logprobs`` instead.
    """
    out = dict(args)
    body = dict(out.pop("extra_body", None) or {})
    choices = out.pop("guided_choice", None)
    mode = guided_choice if guided_choice != "auto" else ("guided_choice" if server else "logprobs")
    if choices:
        if mode == "guided_choice":
            body["guided_choice"] = list(choices)
        elif mode == "structured_outputs":
            body["structured_outputs"] = {"choice": list(choices)}
    for name in _SERVER_OPTIONS:
        if name in out:
            if not server:
                raise BackendError(f"{name} is not an OpenAI API option; set it only for OpenAI-compatible servers")
            body[name] = out.pop(name)
    if body:
        out["extra_body"] = body
    return out


@functools.cache
def _client_class() -> type[ChatCompletionClient]:
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    class OpenAICompatibleClient(OpenAIChatCompletionClient):
        """autogen's client, with vLLM-style options (``guided_choice``, ``repetition_penalty``) translated."""

        def __init__(self, *, server: bool, guided_choice: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._translate = {"server": server, "guided_choice": guided_choice}

        async def create(
            self, messages: Sequence[LLMMessage], *, extra_create_args: Mapping[str, Any] = {}, **kwargs: Any
        ) -> CreateResult:
            args = translate_create_args(extra_create_args, **self._translate)
            return await super().create(messages, extra_create_args=args, **kwargs)

        async def create_stream(  # type: ignore[override]
            self, messages: Sequence[LLMMessage], *, extra_create_args: Mapping[str, Any] = {}, **kwargs: Any
        ) -> AsyncGenerator[str | CreateResult, None]:
            args = translate_create_args(extra_create_args, **self._translate)
            async for chunk in super().create_stream(messages, extra_create_args=args, **kwargs):
                yield chunk

    return OpenAICompatibleClient


def check_openai_spec(spec: BackendSpec, settings: BackendSettings) -> None:
    """The target is a model or ``URL#MODEL``, the SDK is installed, and the OpenAI API has a key (no request)."""
    base_url, model = split_openai_target(spec.target)
    if not model.strip():
        raise SpecError(f"malformed openai spec {spec.text!r}: no model name")
    if importlib.util.find_spec("openai") is None:
        raise BackendError(
            f"{spec.text}: the openai backend needs autogen-ext[openai]: pip install 'autogen-ext[openai]'"
        )
    if base_url is None and read_secret(settings.api_key_env) is None:
        raise BackendError(f"{spec.text}: set {settings.api_key_env} to call the OpenAI API")


@register_backend(
    "openai",
    description="OpenAI, or any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp server)",
    example="openai:gpt-4o-mini  |  openai:http://127.0.0.1:8000/v1#served-model",
    check=check_openai_spec,
)
def build_openai_client(spec: BackendSpec, settings: BackendSettings) -> ChatCompletionClient:
    """autogen-ext's OpenAI client; retries are ours (SDK retries off), the key comes from the env."""
    try:
        client_class = _client_class()
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
    return client_class(server=base_url is not None, guided_choice=settings.guided_choice, **kwargs)
