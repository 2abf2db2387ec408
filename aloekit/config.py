"""Run configuration: pydantic models loaded from TOML/YAML, then ``ALOE_*`` env vars, then CLI flags."""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from aloekit.errors import AloeError, ConfigError
from aloekit.limits import SQLITE_INT_MAX, SQLITE_INT_MIN
from aloekit.secrets import register_url_secrets

ENV_PREFIX = "ALOE_"
M = TypeVar("M", bound=BaseModel)
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")
MAX_CONFIG_BYTES = 16 * 2**20
MAX_SEED = 2**32 - 1
"""The largest seed: numpy's, which trl and transformers seed."""


def _types_in(annotation: Any) -> set[Any]:
    """The types an annotation admits: through ``X | None``, ``Optional``, ``Annotated`` and ``Literal``'s values."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return set().union(*map(_types_in, get_args(annotation)))
    if origin is Annotated:
        return _types_in(get_args(annotation)[0])
    if origin is Literal:
        return {type(value) for value in get_args(annotation)}
    return {annotation}


class Settings(BaseModel):
    """Base of the settings users write (config files, environment, flags): unknown keys, inf and nan, and
    true or false where a number belongs are refused (pydantic alone reads ``turns = true`` as 1; inf/nan
    would pass a range check's intent badly: an infinite timeout hangs, nan compares false)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            admitted = _types_in(cls.model_fields[info.field_name].annotation)
            if admitted & {int, float} and not admitted & {bool, Any}:
                raise ValueError("a number, not true or false")
        return value


class GenerationOptions(Settings):
    """Sampling options passed the same way to every backend (as autogen ``extra_create_args``)."""

    temperature: float | None = Field(default=None, ge=0)
    """Sampling temperature; 0 means greedy decoding."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Upper bound on generated tokens."""
    top_p: float | None = Field(default=None, gt=0, le=1)
    """Nucleus sampling mass."""
    seed: int | None = Field(default=None, ge=SQLITE_INT_MIN, le=SQLITE_INT_MAX)
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


class BackendSettings(Settings):
    """How aloekit calls one backend endpoint: limits, timeouts, retries, caching."""

    max_concurrency: int = Field(default=8, gt=0)
    """Requests in flight at once to this endpoint (shared by every role using it)."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Seconds before one request is abandoned and retried."""
    max_retries: int = Field(default=3, ge=0, le=100)
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
    engine: Literal["auto", "continuous", "static"] = "auto"
    """In-process backends: ``continuous`` batching (transformers' paged-attention manager: requests join and
    leave the running batch every step), or ``static`` batches of up to ``max_batch_size`` that run to their
    end. ``auto``: continuous on CUDA, static on CPU, where it measured faster."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """In-process backends: what the model's weights and activations load as. ``auto``: bfloat16 on CUDA and on
    a CPU with AMX tiles (whose bfloat16 matrix products measured 6-8x faster than float32), float32 on
    other CPUs, where bfloat16 measured faster for one chat at a time but slower for batches (README,
    Performance)."""
    weights: Literal["auto", "packed", "float"] = "auto"
    """In-process ``local:`` models: ``packed`` decodes with the GGUF's own Q4_1/Q8_0 blocks through aloekit's
    int8 dot kernel where it compiles and the CPU has AVX-512 VNNI, else torch's CPU int4/int8 kernels
    (prompts still run in float), about twice as fast on a CPU; ``float`` uses the float32 weights the GGUF is
    converted to. ``auto``: packed on a CPU (float32 or bfloat16, static engine) where torch has the kernels."""
    kv_cache_fraction: float | None = Field(default=None, gt=0, lt=1)
    """In-process backends, continuous engine: the share of free GPU memory its paged KV cache takes when the
    model loads (None: 0.5). Lower it when training or more in-process models share the GPU."""
    cache: bool = False
    """Reuse stored answers for identical deterministic or seeded requests."""
    system_role: bool = True
    """Servers: false when the model's chat template rejects a system message (Gemma's, Mistral-Instruct
    v0.1's); the system prompt is then sent as the start of the first user message. In-process backends
    find this out from their template."""
    guided_choice: Literal["auto", "guided_choice", "structured_outputs", "logprobs"] = "auto"
    """OpenAI-compatible servers: how a constrained answer is asked for. ``guided_choice`` (vLLM's field)
    or ``structured_outputs`` (vLLM >= 0.10) in the request body, or ``logprobs``: not constrained, the
    answer read from the first token's top_logprobs. ``auto``: guided_choice for a server URL, logprobs
    for the OpenAI API (which rejects unknown fields)."""


class AloeConfig(Settings):
    """Top-level configuration shared by every ``aloe`` command."""

    db: Path = Path("aloe.db")
    """SQLite database holding runs, the call log and every later stage's output."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
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


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces, so an error stays one line."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def format_loc(loc: Sequence[str | int]) -> str:
    """A pydantic error location as a dotted field path (``backend.timeout_s``, ``plugins.0``)."""
    return ".".join(str(part) for part in loc) or "(root)"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return one_line(f"field {format_loc(err['loc'])}: {err['msg']}")


def read_text_file(path: Path, what: str, error: type[AloeError] = ConfigError, max_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path`` (a BOM is dropped), or ``error`` naming ``what``, the file and, for bytes
    that are not UTF-8, the line."""
    if not path.exists():
        raise error(one_line(f"{what} {path}: not found"))
    if path.is_dir():
        raise error(one_line(f"{what} {path}: is a folder, not a file"))
    if not path.is_file():  # a FIFO would block, /dev/zero would fill the memory
        raise error(one_line(f"{what} {path}: not a regular file"))
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise error(one_line(f"{what} {path}: larger than {max_bytes // 2**20} MiB, not a config file"))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(one_line(f"{what} {path}: cannot read: {exc.strerror or exc}")) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            one_line(f"{what} {path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})")
        ) from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """``line N: problem`` for a YAML error; the reader's errors carry a position instead of a mark."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"line {text.count(chr(10), 0, exc.position) + 1}: {exc.reason} (character #x{exc.character:04x})"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}: " if mark else ""
    said = [getattr(exc, "context", None), getattr(exc, "problem", None)]  # "while parsing ...", "found ..."
    problem = ", ".join(part for part in said if part) or str(exc).splitlines()[0]
    return f"{where}{problem}"


def read_config_file(path: Path, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML or YAML config file into a dict, with one-line errors that name the file and line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.exists() and not path.is_dir() and suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"{what} {path}: unknown format {suffix!r} (use .toml, .yaml or .yml)")
    text = read_text_file(path, what, max_bytes=MAX_CONFIG_BYTES)
    register_url_secrets(text)  # a key in a backend URL is redacted everywhere, as one typed on the command line
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
        raise ConfigError(one_line(f"{what} {path}: invalid TOML: {exc}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(one_line(f"{what} {path}: invalid YAML: {_yaml_problem(exc, text)}")) from None
    except RecursionError:  # both parsers recurse once per level: "[" * 100000 ends here, not in a crash
        raise ConfigError(f"{what} {path}: nested too deeply to read") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: top level must be a table/mapping, got {type(data).__name__}")
    return data


def has_path(data: Any, loc: Sequence[str | int]) -> bool:
    """Whether ``data`` (nested dicts and lists) holds a value at ``loc``, or a scalar above it."""
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return not isinstance(data, Mapping | list)  # a scalar where a table was expected is that layer's
    return True


def source_of(loc: Sequence[str | int], layers: Sequence[tuple[str, Any]]) -> str | None:
    """The label of the first layer (highest precedence first) that sets the value at ``loc``."""
    return next((label for label, data in layers if data and has_path(data, loc)), None)


def config_layers(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Where settings come from, highest precedence first: flags, each ``ALOE_*`` variable, the file."""
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    layers = [(f"flag --{key.replace('_', '-')}", {key: value}) for key, value in flags.items()]
    layers += list(reversed(_env_layers(environ)[1]))
    if path is not None:
        layers.append((f"file {path}", read_config_file(Path(path))))
    return layers


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Collect ``ALOE_FIELD`` and ``ALOE_SECTION__FIELD`` variables that name config fields."""
    return _env_layers(environ)[0]


def _env_layers(environ: Mapping[str, str] | None) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The merged env overrides, and each variable alone (to name the one a validation error is about)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    each: list[tuple[str, dict[str, Any]]] = []
    for name, raw in sorted(environ.items()):  # sorted: a conflict is reported the same way every time
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in AloeConfig.model_fields:
            continue  # other ALOE_* variables (ALOE_SMOLLM2_GGUF, ALOE_CACHE_DIR) are not config fields
        value = _parse_scalar(raw)
        _set_path(out, path, value, name)
        single: dict[str, Any] = {}
        _set_path(single, path, value, name)
        each.append((f"environment variable {name}", single))
    return out, each


def _parse_scalar(raw: str) -> Any:
    # JSON first so ALOE_GENERATION__STOP='["\\n"]' and numbers work; anything else stays a string.
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return raw


def _set_path(target: dict[str, Any], path: list[str], value: Any, name: str) -> None:
    for depth, key in enumerate(path[:-1]):
        target = target.setdefault(key, {})
        if not isinstance(target, dict):  # ALOE_BACKEND=3 beside ALOE_BACKEND__TIMEOUT_S=9
            table = ENV_PREFIX + "__".join(path[: depth + 1]).upper()
            raise ConfigError(f"environment variable {name}: {table} is set to a value, not a table")
    target[path[-1]] = value


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it: tables merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def field_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """The defaults of ``model``'s fields that have one, as plain data (nested models dumped)."""

    def plain(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump()
        return [plain(item) for item in value] if isinstance(value, list) else value

    return {name: plain(field.get_default(call_default_factory=True))
            for name, field in model.model_fields.items() if not field.is_required()}  # fmt: skip


def resolve_section(model: type[M], *layers: Mapping[str, Any], list_items: Mapping[str, Any] | None = None) -> M:
    """``model`` from its defaults with each layer (file section, then flags) deep-merged over them.

    A restated role table keeps every default it does not set (its generation limits, say). Lists are
    replaced whole; ``list_items`` gives, per list field, the defaults each restated item merges onto.
    """
    merged = field_defaults(model)
    for layer in layers:
        for key, value in layer.items():
            if list_items and key in list_items and isinstance(value, list):
                value = [deep_merge(list_items[key], item) if isinstance(item, Mapping) else item for item in value]
                merged[key] = value
            elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = value
    return model.model_validate(merged)


def load_config(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AloeConfig:
    """Resolve the config: defaults < file < ``ALOE_*`` env vars < ``overrides`` (CLI flags)."""
    data: dict[str, Any] = {}
    file_label = "config"
    if path is not None:
        path = Path(path)
        data = read_config_file(path)
        file_label = f"config file {path}"
    env, env_each = _env_layers(environ)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return AloeConfig.model_validate(deep_merge(deep_merge(data, env), flags))
    except ValidationError as exc:
        # Name where the bad value came from: a flag beats an environment variable beats the file.
        loc = exc.errors()[0]["loc"]
        flag_layer = [(f"--{str(loc[0]).replace('_', '-')}", flags)] if loc else []
        source = source_of(loc, [*flag_layer, *reversed(env_each), (file_label, data)]) or file_label
        raise ConfigError(f"{source}: {_first_error(exc)}") from None
