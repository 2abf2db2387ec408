"""Run configuration: pydantic models loaded from TOML/YAML, then ``ALOE_*`` env vars, then CLI flags."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aloekit.errors import ConfigError

ENV_PREFIX = "ALOE_"


class GenerationOptions(BaseModel):
    """Sampling options passed the same way to every backend (as autogen ``extra_create_args``)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0)
    """Sampling temperature; 0 means greedy decoding."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Upper bound on generated tokens."""
    top_p: float | None = Field(default=None, gt=0, le=1)
    """Nucleus sampling mass."""
    seed: int | None = None
    """Sampling seed; a seeded call is reproducible and therefore cacheable."""
    stop: list[str] | None = None
    """Strings at which generation stops (the stop string is not returned)."""
    repetition_penalty: float | None = Field(default=None, gt=0)
    """Penalty on repeated tokens (1 = none): in-process models, and servers that read it (vLLM, SGLang).
    Applied only where set, and recorded with the run, so every backend samples alike."""

    def as_create_args(self) -> dict[str, Any]:
        """Return the options that are set, as autogen ``extra_create_args``."""
        return self.model_dump(exclude_none=True)

    @property
    def deterministic(self) -> bool:
        """Whether two calls with these options should give the same answer."""
        return self.temperature == 0 or self.seed is not None

    def merged(self, other: GenerationOptions | Mapping[str, Any] | None) -> GenerationOptions:
        """Return these options overridden by the fields set in ``other``."""
        if other is None:
            return self
        extra = other.as_create_args() if isinstance(other, GenerationOptions) else dict(other)
        return GenerationOptions.model_validate({**self.as_create_args(), **extra})


class BackendSettings(BaseModel):
    """How aloekit calls one backend endpoint: limits, timeouts, retries, caching."""

    model_config = ConfigDict(extra="forbid")

    max_concurrency: int = Field(default=8, gt=0)
    """Requests in flight at once to this endpoint (shared by every role using it)."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Seconds before one request is abandoned and retried."""
    max_retries: int = Field(default=3, ge=0)
    """Retries after the first attempt on 429, 5xx, timeouts and connection errors."""
    backoff_base_s: float = Field(default=0.5, ge=0)
    """First backoff delay; doubles each retry, with jitter."""
    backoff_max_s: float = Field(default=30.0, ge=0)
    """Cap on one backoff delay (a server's Retry-After is honoured up to ``retry_after_max_s``)."""
    retry_after_max_s: float = Field(default=120.0, ge=0)
    """Longest Retry-After that is waited for as asked."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself is never stored)."""
    max_batch_size: int = Field(default=8, gt=0)
    """In-process backends: most requests grouped into one ``generate`` call."""
    batch_wait_s: float = Field(default=0.01, ge=0)
    """In-process backends: how long the first request of a batch waits for others to join."""
    cache: bool = False
    """Reuse stored answers for identical deterministic or seeded requests."""
    guided_choice: Literal["auto", "guided_choice", "structured_outputs", "logprobs"] = "auto"
    """OpenAI-compatible servers: how a constrained answer is asked for. ``guided_choice`` (vLLM's field)
    or ``structured_outputs`` (vLLM >= 0.10) in the request body, or ``logprobs``: not constrained, the
    answer read from the first token's top_logprobs. ``auto``: guided_choice for a server URL, logprobs
    for the OpenAI API (which rejects unknown fields)."""


class AloeConfig(BaseModel):
    """Top-level configuration shared by every ``aloe`` command."""

    model_config = ConfigDict(extra="forbid")

    db: Path = Path("aloe.db")
    """SQLite database holding runs, the call log and every later stage's output."""
    seed: int = 0
    """Seed for everything random in a run."""
    generation: GenerationOptions = GenerationOptions()
    """Default generation options for every role."""
    backend: BackendSettings = BackendSettings()
    """Default settings for every backend."""
    backends: dict[str, dict[str, Any]] = {}
    """Per-spec overrides of ``backend``, e.g. ``{"openai:gpt-4o-mini": {"max_concurrency": 32}}``."""
    plugins: list[str] = []
    """Python modules imported before a command runs, e.g. to register your own roles or backends."""
    simulation: dict[str, Any] = {}
    """Settings for ``aloe simulate`` (see :class:`aloekit.graphs.SimulationConfig`), validated when it runs."""
    evaluation: dict[str, Any] = {}
    """Settings for ``aloe eval`` (see :class:`aloekit.evaluation.EvalConfig`), validated when it runs."""

    @field_validator("backends")
    @classmethod
    def _check_overrides(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for spec, override in value.items():
            try:
                BackendSettings.model_validate(override)
            except ValidationError as exc:
                raise ValueError(f"backends[{spec!r}]: {_first_error(exc)}") from None
        return value

    def backend_settings(self, spec: str) -> BackendSettings:
        """Return the settings for ``spec``: the defaults overridden by ``backends[spec]``."""
        return BackendSettings.model_validate({**self.backend.model_dump(), **self.backends.get(spec, {})})


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"field {where}: {err['msg']}"


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML or YAML config file into a dict, with errors that name the file and line."""
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {path}: unknown format {suffix!r} (use .toml, .yaml or .yml)")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}: {where}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a table/mapping, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Collect ``ALOE_FIELD`` and ``ALOE_SECTION__FIELD`` variables that name config fields."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in AloeConfig.model_fields:
            continue  # other ALOE_* variables (ALOE_SMOLLM2_GGUF, ALOE_CACHE_DIR) are not config fields
        _set_path(out, path, _parse_scalar(raw))
    return out


def _parse_scalar(raw: str) -> Any:
    # JSON first so ALOE_GENERATION__STOP='["\\n"]' and numbers work; anything else stays a string.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AloeConfig:
    """Resolve the config: defaults < file < ``ALOE_*`` env vars < ``overrides`` (CLI flags)."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        data = read_config_file(path)
        source = f"config file {path}"
    data = _deep_merge(data, env_overrides(environ))
    if overrides:
        data = _deep_merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        return AloeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None
