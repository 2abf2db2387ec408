"""LoRA fine-tuning with trl + peft: thin entry points over trl's own SFTConfig/DPOConfig and trainers."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import json
import logging
import math
import os
import re
import tempfile
import time
import types
import typing
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from aloekit.config import MAX_SEED, Settings, format_loc, one_line, read_config_file, read_text_file, source_of
from aloekit.errors import AloeError, ConfigError
from aloekit.limits import MAX_BATCH_ROWS, MIN_MAX_LENGTH
from aloekit.training.data import data_hash

logger = logging.getLogger(__name__)

Method = Literal["sft", "dpo"]


class TrainingDataError(AloeError):
    """A training data file or dataset folder is missing or malformed; the message names the file and line."""


# The CLI flag behind each TrainConfig field, so an error about a value given on the command line names it.
FLAGS = {"data": "--data", "base": "--base", "out": "--out", "init_adapter": "--init-adapter", "epochs": "--epochs",
         "max_steps": "--max-steps", "max_length": "--max-length", "beta": "--beta", "seed": "--seed",
         "lora.r": "--lora-r", "lora.alpha": "--lora-alpha", "lora.dropout": "--lora-dropout",
         "lora.target_modules": "--target-modules", "overwrite": "--overwrite",
         "batch_size": "--batch-size"}  # fmt: skip
# SFTConfig/DPOConfig fields that TrainConfig sets from its own checked fields: setting them under `trl`
# would silently bypass those checks.
OWNED_TRL_FIELDS = {"max_steps": "max_steps (--max-steps)", "num_train_epochs": "epochs (--epochs)",
                    "seed": "seed (--seed)", "max_length": "max_length (--max-length)",
                    "beta": "beta (--beta)", "output_dir": "out (--out)"}  # fmt: skip
# trl/transformers accept these and only fail mid-training (a zero batch size, a zero learning rate).
ROW_COUNT_TRL_FIELDS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
POSITIVE_TRL_FIELDS = ("learning_rate", *ROW_COUNT_TRL_FIELDS)


class LoraSettings(Settings):
    """peft LoRA settings."""

    r: int = Field(default=16, gt=0)
    """Rank."""
    alpha: int = Field(default=32, gt=0)
    """Scaling numerator (lora_alpha)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the LoRA path."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt; ``all-linear`` adapts every linear layer but the output head."""

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: list[str] | str) -> list[str] | str:
        names = [value] if isinstance(value, str) else value
        if not names or not all(name.strip() for name in names):
            raise ValueError("name at least one module (or all-linear); an empty name adapts nothing")
        if isinstance(value, str) and value != "all-linear":  # peft reads one string as a regular expression
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression of module names: {exc}") from None
        return value


class TrainConfig(Settings):
    """One training run. Defaults come from ``aloekit/training/defaults/{method}.yaml``."""

    method: Method
    """``sft`` or ``dpo``."""
    data: Path
    """A .jsonl file from ``aloe export``, or a folder saved with ``--hf-dataset``."""
    base: str
    """Base model spec: ``local:smollm2`` or ``hf:PATH``."""
    out: Path
    """Folder for the adapter and ``training_summary.json``."""
    init_adapter: Path | None = None
    """Continue training this adapter (SFT then DPO)."""
    overwrite: bool = False
    """Replace an adapter already in ``out``."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run ``epochs``)."""
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the data when ``max_steps`` is -1."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed for trl/transformers (numpy's seed range)."""
    lora: LoraSettings = LoraSettings()
    """LoRA settings."""
    max_length: int = Field(default=2048, ge=MIN_MAX_LENGTH)
    """Longest tokenised row; longer rows are dropped and counted, never silently truncated."""
    beta: float = Field(default=0.9, gt=0)
    """DPO temperature (the paper's 0.9)."""
    batch_size: int | Literal["auto"] = "auto"
    """Rows per device per step. ``auto``: on CUDA, transformers' ``auto_find_batch_size`` from
    ``CUDA_START_BATCH`` down, shrunk 10% per out-of-memory; on CPU, ``CPU_BATCH``."""
    trl: dict[str, Any] = {}
    """Any other ``SFTConfig``/``DPOConfig`` field (learning_rate, per_device_train_batch_size...)."""

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value != -1 and value < 1:  # 0 steps would save an untrained adapter as if it were trained
            raise ValueError("must be at least 1, or -1 to run `epochs`")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _rows_or_auto(cls, value: Any) -> int | str:
        # Before pydantic's union, so that a bad value is named `batch_size`, not a member of the union.
        if value == "auto":
            return value
        rows = int(value) if isinstance(value, str) and value.isdigit() else value
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_BATCH_ROWS:
            raise ValueError(f"must be a number of rows from 1 to {MAX_BATCH_ROWS}, or auto (got {value!r})")
        return rows


CUDA_START_BATCH = 32
"""The first batch ``auto`` tries on CUDA (shrunk on out-of-memory): a small model's step is then several
times faster than at the CPU's batch (benchmarks/bench_train.py)."""
CPU_BATCH = 2
"""``auto`` on CPU: larger batches on 2 cores only pad more."""


def batch_args(config: TrainConfig, cuda: bool) -> dict[str, Any]:
    """trl's batch-size fields for ``config.batch_size`` (a ``trl.per_device_train_batch_size`` of the user's
    wins over ``auto``; both set is refused, since one would be ignored)."""
    if "per_device_train_batch_size" in config.trl:
        if config.batch_size != "auto":
            raise ConfigError("train config: batch size set twice: --batch-size (batch_size) and "
                              "trl.per_device_train_batch_size; keep one")  # fmt: skip
        return {}
    if config.batch_size != "auto":
        return {"per_device_train_batch_size": config.batch_size}
    if cuda:
        return {"per_device_train_batch_size": CUDA_START_BATCH, "auto_find_batch_size": True}
    return {"per_device_train_batch_size": CPU_BATCH}


def precision_args(cuda: bool, trl: Mapping[str, Any]) -> dict[str, bool]:
    """trl's ``bf16`` on CPU: only where oneDNN has bf16 kernels; on CUDA, or when ``trl`` sets ``bf16`` or
    ``fp16``, trl's own choice stands (it takes bf16 unless fp16 is set).

    trl's configs default to ``bf16=True``, which on CPU turns on bf16 autocast. Without oneDNN's bf16
    kernels (an AVX2 CPU) torch multiplies bf16 matrices in a plain loop: DPO steps there were 12.5x
    slower than in float32 (benchmarks/bench_train.py --plain-precision trl-default).
    """
    if cuda or "bf16" in trl or "fp16" in trl:
        return {}
    return {"bf16": cpu_has_bf16_kernels()}


def checkpointing_args(enabled: bool, options: dict[str, Any] | None, trl: Mapping[str, Any]) -> dict[str, Any]:
    """trl's fields for gradient (activation) checkpointing, ``enabled`` with ``options`` (None: trl's own),
    under the names this transformers reads: ``activation_checkpointing`` and ``activation_checkpointing_kwargs``
    in later 5.x releases (5.24 has them, 5.17 not), whose ``gradient_checkpointing*`` are deprecated aliases
    that warn; the old names before. Neither where ``trl`` sets one under either name: the user's stands."""
    from transformers import TrainingArguments

    name = "activation" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient"
    return {f"{name}_{field}": value for field, value in (("checkpointing", enabled), ("checkpointing_kwargs", options))
            if value is not None and not {f"gradient_{field}", f"activation_{field}"} & set(trl)}  # fmt: skip


def cpu_has_bf16_kernels() -> bool:
    """Whether torch multiplies bf16 matrices with oneDNN on this CPU, as torch decides it (AVX-512,
    AVX-NE-CONVERT or Arm's bf16); False on a torch built without oneDNN or with it switched off."""
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: absent from some builds
        return False


def mixed_precision(args: Any) -> str:
    """What a trl config trains in: ``bf16``, ``fp16`` or ``no`` (the model's own dtype)."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "no"


def default_config(method: Method) -> dict[str, Any]:
    """The shipped YAML defaults for ``method``."""
    text = (resources.files("aloekit.training") / "defaults" / f"{method}.yaml").read_text()
    return yaml.safe_load(text)


def build_train_config(
    method: Method, file: Path | None = None, *, default_seed: int | None = None, **overrides: Any
) -> TrainConfig:
    """Shipped defaults (and ``default_seed``, the run's top-level seed) < YAML/TOML ``file`` < ``overrides``;
    None values are ignored and the ``lora`` and ``trl`` tables are merged key by key. Errors name the file or
    flag and the field."""

    def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            if value is None:
                continue
            tables = key in ("lora", "trl") and isinstance(value, dict) and isinstance(base.get(key), dict)
            out[key] = {**base[key], **value} if tables else value
        return out

    defaults = default_config(method) | ({"seed": default_seed} if default_seed is not None else {})
    from_file = read_config_file(Path(file), "train config") if file is not None else {}
    # The CLI passes {} for "no --lora-*/--trl flags": that overrides nothing, and names no source.
    flags = {
        key: value
        for key, value in overrides.items()
        if value is not None and not (key in ("lora", "trl") and value == {})
    }
    data = merge(merge(defaults, from_file), {**flags, "method": method})
    layers = [("flag", flags), (f"train config {file}", from_file), ("shipped defaults", defaults)]
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(_config_message(err["loc"], err["msg"], layers)) from None
    check_trl_options(config, layers)
    batch_args(config, cuda=False)  # a batch size set twice fails here, before any run row
    return config


def _config_message(loc: tuple[str | int, ...], problem: str, layers: list[tuple[str, Any]]) -> str:
    """``SOURCE: field PATH (--flag): problem``, the source being the file or flag that set the value."""
    field = format_loc(loc)
    source = source_of(loc, layers) or "train config"
    if source == "flag":
        flag = f"--trl {loc[1]}=..." if loc[0] == "trl" and len(loc) > 1 else FLAGS.get(field, FLAGS.get(str(loc[0])))
        return one_line(f"train config: field {field}{f' ({flag})' if flag else ''}: {problem}")
    return one_line(f"{source}: field {field}: {problem}")


def _trl_class(method: Method) -> type:
    from trl import DPOConfig, SFTConfig

    return SFTConfig if method == "sft" else DPOConfig


def _describe(hint: Any) -> str:
    """A type annotation in words, for "expected ..." messages."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in typing.get_args(hint)))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             list: "a list", dict: "a mapping"}  # fmt: skip
    return names.get(typing.get_origin(hint) or hint, str(hint))


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits a simple annotation; None where the annotation is too rich to check here."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_fits(value, arg) for arg in typing.get_args(hint)]
        return True if True in results else (None if None in results else False)
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str | hint)  # which strings are valid is the config class's own check
    if (origin or hint) in (list, dict):
        return isinstance(value, origin or hint)
    return None


def check_trl_options(config: TrainConfig, layers: list[tuple[str, Any]] | None = None) -> None:
    """Refuse ``trl`` options that SFTConfig/DPOConfig would reject, or accept and fail on mid-training:
    unknown keys, fields TrainConfig owns, values of the wrong type or out of range. Errors name the key."""
    if not config.trl:
        return
    cls = _trl_class(config.method)
    layers = layers or [("train config", {"trl": config.trl})]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation this Python cannot resolve: keep the key checks, skip the type checks
        hints = {}

    def fail(key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(_config_message(("trl", key), problem, layers))

    for key, value in config.trl.items():
        if key in OWNED_TRL_FIELDS and (key != "beta" or config.method == "dpo"):
            fail(key, f"set {OWNED_TRL_FIELDS[key]} instead, which is checked")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            fail(key, f"not a {cls.__name__} field" + (f" (did you mean {close[0]}?)" if close else ""))
        if key in hints and _fits(value, hints[key]) is False:
            fail(key, f"expected {_describe(hints[key])}, got {value!r}")
        if key in POSITIVE_TRL_FIELDS and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            fail(key, f"must be a number greater than 0, got {value!r}")
        if key in ROW_COUNT_TRL_FIELDS and value > MAX_BATCH_ROWS:
            fail(key, f"must be at most {MAX_BATCH_ROWS}, got {value!r}")
    trl_args(config, has_eval=False, layers=layers)  # the config class's own checks (scheduler names...)


def _trl_culprit(cls: type, base: dict[str, Any], options: dict[str, Any]) -> tuple[str | None, str]:
    """The ``trl`` key that makes ``cls`` refuse its arguments, and why (None: only their combination)."""
    for key, value in options.items():
        try:
            cls(**{**base, key: value})
        except (TypeError, ValueError) as exc:
            return key, str(exc)
    try:
        cls(**base, **options)
    except (TypeError, ValueError) as exc:
        return None, str(exc)
    return None, "rejected"


# Data -------------------------------------------------------------------------------------------------


def _check_messages(value: Any, where: str, field: str, roles: set[str]) -> None:
    if not isinstance(value, list) or not value:
        raise TrainingDataError(f"{where}: field '{field}' must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise TrainingDataError(f"{where}: field '{field}[{i}]' must be an object with a string 'content'")
        role = message.get("role")
        if not isinstance(role, str) or role not in roles:  # a list or dict role is unhashable: check the type first
            raise TrainingDataError(
                one_line(f"{where}: field '{field}[{i}].role' must be one of {sorted(roles)}, got {role!r}")
            )


def validate_rows(rows: list[dict[str, Any]], method: Method, source: str, lines: list[int] | None = None) -> None:
    """Check rows are in trl's conversational format for ``method``; errors name the row (or, given ``lines``,
    the file's line) and the field."""
    if not rows:
        raise TrainingDataError(f"{source}: no rows to train on")
    chat_roles = {"system", "user", "assistant"}
    for number, row in enumerate(rows, start=1):
        where = f"{source}: line {lines[number - 1]}" if lines else f"{source}: row {number}"
        if not isinstance(row, dict):
            raise TrainingDataError(f"{where}: expected an object, got {type(row).__name__}")
        if method == "sft":
            shape = "prompt-completion" if "prompt" in row or "completion" in row else "messages"
            first_shape = "prompt-completion" if "prompt" in rows[0] or "completion" in rows[0] else "messages"
            if shape != first_shape:
                raise TrainingDataError(
                    f"{where}: a {shape} row among {first_shape} rows (use one SFT format per file)"
                )
            if shape == "prompt-completion":
                for name in ("prompt", "completion"):
                    if name not in row:
                        raise TrainingDataError(
                            f"{where}: missing field '{name}' (prompt-completion SFT rows need both)"
                        )
                _check_messages(row["prompt"], where, "prompt", chat_roles)
                _check_messages(row["completion"], where, "completion", {"assistant"})
                continue
            if "messages" not in row:
                raise TrainingDataError(
                    f'{where}: missing fields: SFT rows are {{"prompt": [...], "completion": [...]}} '
                    'or {"messages": [...]}'
                )
            _check_messages(row["messages"], where, "messages", chat_roles)
            if not any(m["role"] == "assistant" for m in row["messages"]):
                raise TrainingDataError(f"{where}: field 'messages' has no assistant message to learn from")
        else:
            for name in ("prompt", "chosen", "rejected"):
                if name not in row:
                    raise TrainingDataError(f"{where}: missing field '{name}' (DPO rows need prompt, chosen, rejected)")
            _check_messages(row["prompt"], where, "prompt", chat_roles)
            _check_messages(row["chosen"], where, "chosen", {"assistant"})
            _check_messages(row["rejected"], where, "rejected", {"assistant"})


def read_jsonl_rows(path: Path) -> tuple[list[Any], list[int]]:
    """The JSON values of a .jsonl file and the line each came from; errors name the file and line."""
    text = read_text_file(path, "training data", TrainingDataError)
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}: line {number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:  # "[" * 100000: json recurses per level
            raise TrainingDataError(f"{path}: line {number}: JSON nested too deeply") from None
        lines.append(number)
    return rows, lines


def _load_dataset_folder(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) rows of a folder saved with ``aloe export --hf-dataset``."""
    from datasets import load_from_disk

    try:
        saved = load_from_disk(str(path))
        splits = saved if hasattr(saved, "keys") else {"train": saved}
        names = sorted(splits.keys())
        # Rows are read here, inside the try: arrow files are memory-mapped, so damage shows only when read.
        train = [dict(r) for r in splits["train"]] if "train" in splits else None
        val = [dict(r) for r in splits["validation"]] if "validation" in splits else []
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ArrowInvalid...) for a bad folder
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingDataError(one_line(f"{path}: not a dataset saved with --hf-dataset ({reason})")) from None
    if train is None:
        raise TrainingDataError(f"{path}: the dataset has no 'train' split (it has {names})")
    return train, val


def validation_path(path: Path) -> Path:
    """Where ``aloe export --val-fraction`` puts the validation split of ``path``: ``NAME.val.jsonl`` beside it."""
    return path.with_name(f"{path.stem}.val{path.suffix}")


BINARY_DATA_SUFFIXES = (".parquet", ".arrow", ".feather", ".gz", ".zip")
"""Data files that are not JSON lines, refused by name (``aloe export rollouts --format verl`` writes parquet)."""


def load_rows(path: Path, method: Method) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) rows from a .jsonl file (and ``NAME.val.jsonl`` beside it) or a ``datasets``
    folder, validated; errors name the file and line."""
    if not path.exists():
        raise TrainingDataError(f"training data {path}: not found")
    if path.is_dir():
        train, val = _load_dataset_folder(path)
        validate_rows(train, method, f"{path} (train split)")
        if val:
            validate_rows(val, method, f"{path} (validation split)")
        return train, val
    if path.suffix.lower() in BINARY_DATA_SUFFIXES:  # read as JSON lines, it was "not UTF-8 text"
        raise TrainingDataError(f"training data {path}: {path.suffix} files are not read; give the .jsonl file "
                                "`aloe export sft|dpo` writes, or a datasets folder (--hf-dataset)")  # fmt: skip
    train, lines = read_jsonl_rows(path)
    validate_rows(train, method, str(path), lines)
    val_path = validation_path(path)
    val: list[Any] = []
    if val_path.exists():  # a folder or an unreadable file there is an error, not a silently missing split
        val, val_lines = read_jsonl_rows(val_path)
        if not val:
            raise TrainingDataError(f"{val_path}: empty validation split (delete it to train without one)")
        validate_rows(val, method, str(val_path), val_lines)
    return train, val


def _trl_columns(rows: list[dict[str, Any]], method: Method) -> list[dict[str, Any]]:
    if method == "dpo":
        keep: tuple[str, ...] = ("prompt", "chosen", "rejected")
    else:
        keep = ("prompt", "completion") if rows and "prompt" in rows[0] else ("messages",)
    return [{k: row[k] for k in keep} for row in rows]


def row_length(row: dict[str, Any], tokenizer: Any, method: Method) -> int:
    """Tokens of a row once the chat template is applied (the longer side for DPO)."""

    def count(messages: list[dict[str, str]]) -> int:
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    if method == "sft":
        return count(row["messages"]) if "messages" in row else count(row["prompt"] + row["completion"])
    return max(count(row["prompt"] + row["chosen"]), count(row["prompt"] + row["rejected"]))


def drop_long_rows(
    rows: list[dict[str, Any]], tokenizer: Any, method: Method, max_length: int
) -> tuple[list, int, int]:
    """Rows that fit ``max_length`` (trl would otherwise cut the end off), how many were dropped, tokens kept."""
    kept, dropped, tokens = [], 0, 0
    for row in rows:
        n = row_length(row, tokenizer, method)
        if n > max_length:
            dropped += 1
        else:
            kept.append(row)
            tokens += n
    return kept, dropped, tokens


# Models -----------------------------------------------------------------------------------------------


def check_base(spec: str) -> None:
    """Refuse a base that cannot be trained (an adapter spec, another prefix, a missing model) without loading it."""
    from aloekit.agents.backends import check_spec

    prefix, _, target = spec.partition(":")
    if "+" in target:
        raise AloeError(f"base {spec!r} names an adapter: give the plain base and pass --init-adapter instead")
    if prefix not in ("local", "hf"):
        raise AloeError(f"unsupported base {spec!r}: use local:smollm2 or hf:/path/to/model")
    check_spec(spec)


def resolve_base(spec: str) -> Path:
    """The float model folder behind a base spec (``local:smollm2`` is converted from its GGUF once)."""
    from aloekit.agents.backends.local import LOCAL_MODELS, converted_model_dir, find_smollm2_gguf

    check_base(spec)
    prefix, _, target = spec.partition(":")
    if prefix == "local" and (target in LOCAL_MODELS or target.endswith(".gguf")):
        return converted_model_dir(find_smollm2_gguf(None if target in LOCAL_MODELS else target))
    if prefix == "hf" and target:
        path = Path(target).expanduser()
        if not (path / "config.json").is_file():
            raise AloeError(f"base model not found or not a transformers model folder: {target}")
        return path
    raise AloeError(f"unsupported base {spec!r}: use local:smollm2 or hf:/path/to/model")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot become a folder, or that holds an adapter unless asked to overwrite."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder")
    # Found now, not after training, by a real try: root passes every permission check, yet cannot write in
    # /proc or /sys.
    if existing is not None:
        try:
            made = tempfile.mkdtemp(dir=existing, prefix=".aloe-out-check-")
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot create a folder in {existing}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):  # made, so writable: a folder that will not go is no reason to stop
            os.rmdir(made)
    if (out / "adapter_config.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds an adapter; choose another --out or pass --overwrite")


def check_init_adapter(path: Path) -> None:
    """Refuse an ``--init-adapter`` that is not a peft adapter folder, before any model is loaded."""
    where = f"--init-adapter {path}"
    if not path.exists():
        raise ConfigError(f"{where}: not found")
    if not path.is_dir():
        raise ConfigError(f"{where}: not a folder (give the folder holding adapter_config.json)")
    config_path = path / "adapter_config.json"
    if not config_path.exists():
        raise ConfigError(f"{where}: no adapter_config.json there (not a peft adapter folder)")
    text = read_text_file(config_path, "adapter config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"adapter config {config_path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"adapter config {config_path}: JSON nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("peft_type"), str):
        raise ConfigError(f"adapter config {config_path}: not a peft adapter config (no 'peft_type' field)")
    if not any((path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ConfigError(f"{where}: no adapter weights there (adapter_model.safetensors or adapter_model.bin)")


def check_train_inputs(config: TrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Check everything a run reads or writes that can be checked without a model (``--out``,
    ``--init-adapter``, the data), so bad input fails in one line before any run row or training;
    returns the (train, validation) rows."""
    check_base(config.base)
    check_output_dir(config.out, config.overwrite)
    if config.init_adapter is not None:
        check_init_adapter(config.init_adapter)
    return load_rows(config.data, config.method)


def load_tokenizer(base_dir: Path) -> Any:
    """The base's tokenizer, with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(base_dir: Path) -> Any:
    """The base model: float32 on CPU, bf16 on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)


def load_model_and_tokenizer(base_dir: Path) -> tuple[Any, Any]:
    """:func:`load_model` and :func:`load_tokenizer`."""
    return load_model(base_dir), load_tokenizer(base_dir)


def trl_args(config: TrainConfig, has_eval: bool, layers: list[tuple[str, Any]] | None = None) -> Any:
    """trl's own SFTConfig or DPOConfig for this run; a refused ``trl`` option is named in one line."""
    import torch

    cuda = torch.cuda.is_available()
    common: dict[str, Any] = {
        "output_dir": str(config.out),
        "max_steps": config.max_steps,
        "num_train_epochs": config.epochs,
        "seed": config.seed,
        "max_length": config.max_length,
        # trl turns gradient checkpointing on by default; on CPU it costs 15-25% and saves nothing we need.
        # On CUDA it lets larger batches fit; non-reentrant checkpointing passes gradients to LoRA weights
        # even though the frozen base's inputs need none (build_trainer also enables input gradients).
        **checkpointing_args(cuda, {"use_reentrant": False}, config.trl),
        **batch_args(config, cuda),
        **precision_args(cuda, config.trl),
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not cuda,
        "eval_strategy": "epoch" if has_eval else "no",
    }
    cls = _trl_class(config.method)
    base = {**common, **({"beta": config.beta} if config.method == "dpo" else {})}
    try:
        return cls(**{**base, **config.trl})
    except (TypeError, ValueError):  # name the option instead of showing a traceback
        key, problem = _trl_culprit(cls, base, config.trl)
        if key is None:
            raise ConfigError(one_line(f"train config: {cls.__name__} rejected the trl options: {problem}")) from None
        layers = layers or [("train config", {"trl": config.trl})]
        message = _config_message(("trl", key), f"{cls.__name__} rejected it: {problem}", layers)
        raise ConfigError(message) from None


def build_trainer(
    config: TrainConfig, train_rows: list[dict[str, Any]], val_rows: list[dict[str, Any]], model: Any, tokenizer: Any,
    callbacks: list[Any] | None = None, args: Any = None,
) -> Any:  # fmt: skip
    """The trl trainer with a peft LoRA (or the ``init_adapter`` made trainable).

    For DPO the reference is the model with the adapter disabled (``ref_model=None`` under peft), or,
    when continuing from ``init_adapter``, that adapter as it was before DPO. ``args``: the trl config,
    when the caller made it before loading the model (see :func:`train`).
    """
    from datasets import Dataset
    from trl import DPOTrainer, SFTTrainer

    model, peft_config = lora_model(model, config.lora, config.init_adapter)
    train = Dataset.from_list(_trl_columns(train_rows, config.method))
    val = Dataset.from_list(_trl_columns(val_rows, config.method)) if val_rows else None
    args = args if args is not None else trl_args(config, has_eval=val is not None)
    if args.gradient_checkpointing:  # checkpointed LoRA layers need a graph from the (frozen) embeddings on
        model.enable_input_require_grads()
    kwargs = {"model": model, "args": args, "train_dataset": train, "eval_dataset": val,
              "processing_class": tokenizer, "peft_config": peft_config, "callbacks": callbacks}  # fmt: skip
    trainer = SFTTrainer(**kwargs) if config.method == "sft" else DPOTrainer(ref_model=None, **kwargs)
    if callbacks:
        drop_printing(trainer)
    return trainer


def lora_model(model: Any, lora: LoraSettings, init_adapter: Path | None) -> tuple[Any, Any]:
    """``(model, peft_config)`` for a trl trainer: a new LoRA from ``lora`` (trl wraps the model), or
    ``init_adapter`` loaded trainable (no config); an adapter that does not fit the base is one line."""
    from peft import LoraConfig, PeftModel

    if init_adapter is None:
        check_target_modules(model, lora.target_modules)
        return model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=lora.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    check_init_adapter(init_adapter)
    try:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), None
    except Exception as exc:  # a user's adapter that does not fit this base (shapes, modules): say so in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(one_line(f"--init-adapter {init_adapter}: cannot load it: {reason}")) from None


def check_target_modules(model: Any, target_modules: list[str] | str) -> None:
    """Refuse ``--target-modules`` naming no module of ``model`` (peft's rules: a list names modules by their
    last parts, one string is a regular expression of whole names), in one line with the linear layers it has,
    before trl wraps the model and peft raises in the middle of building the trainer."""
    import torch

    if target_modules == "all-linear":
        return
    modules = [name for name, _ in model.named_modules()]
    if isinstance(target_modules, str):
        missing = [] if any(re.fullmatch(target_modules, m) for m in modules) else [target_modules]
    else:
        missing = [t for t in target_modules if not any(m == t or m.endswith(f".{t}") for m in modules)]
    if missing:
        linear = ", ".join(sorted({m.rpartition(".")[2] for m, module in model.named_modules()
                                   if isinstance(module, torch.nn.Linear)}))  # fmt: skip
        if isinstance(target_modules, str):
            raise ConfigError(f"--target-modules (lora.target_modules) {target_modules!r}: one string is a regular "
                              f"expression and matches no whole module name; give a list of names ({linear}) or "
                              "all-linear")  # fmt: skip
        raise ConfigError(f"--target-modules (lora.target_modules): the base has no module named {', '.join(missing)}"
                          f" (its linear layers: {linear}, or all-linear)")  # fmt: skip


def trainer_batch_size(trainer: Any) -> int:
    """Rows per device per step as trained: the one ``auto_find_batch_size`` settled on, else the configured."""
    return int(getattr(trainer, "_train_batch_size", None) or trainer.args.per_device_train_batch_size)


def device_name() -> str:
    """The device each process trains on: the CUDA device's name, else ``cpu``."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def drop_printing(trainer: Any) -> None:
    """Remove transformers' own progress printing (the caller shows progress itself)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def train(
    config: TrainConfig, callbacks: list[Any] | None = None, on_status: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run one LoRA training and write the adapter and ``training_summary.json`` into ``config.out``."""
    status = on_status or (lambda text: logger.info(text))
    train_rows, val_rows = check_train_inputs(config)
    status(f"resolving base {config.base}")
    base_dir = resolve_base(config.base)
    tokenizer = load_tokenizer(base_dir)
    train_rows, dropped, tokens = drop_long_rows(train_rows, tokenizer, config.method, config.max_length)
    val_rows, val_dropped, _ = drop_long_rows(val_rows, tokenizer, config.method, config.max_length)
    if dropped or val_dropped:
        logger.warning("dropped %d rows longer than max_length=%d tokens (raise --max-length to keep them)",
                       dropped + val_dropped, config.max_length)  # fmt: skip
    if not train_rows:
        raise AloeError(f"{config.data}: every row is longer than max_length={config.max_length} tokens")
    # The trainer's config exists before the model loads: under accelerate with DeepSpeed ZeRO-3 it is what
    # tells from_pretrained to shard the weights as they load (transformers' is_deepspeed_zero3_enabled).
    args = trl_args(config, has_eval=bool(val_rows))
    model = load_model(base_dir)
    trainer = build_trainer(config, train_rows, val_rows, model, tokenizer, callbacks, args)
    status(f"training {config.method} on {len(train_rows)} rows")
    started = time.time()
    result = trainer.train()
    runtime = time.time() - started
    if trainer.state.global_step == 0:  # an untrained adapter must not look like a result
        raise AloeError(f"{config.data}: training ran 0 steps on {len(train_rows)} rows; nothing was written")
    main = trainer.is_world_process_zero()  # under accelerate, one process writes the adapter and the summary
    try:
        config.out.mkdir(parents=True, exist_ok=True)
        trainer.save_model(str(config.out))  # every process takes part (ZeRO-3 gathers), the main one writes
        if main:
            tokenizer.save_pretrained(str(config.out))
    except OSError as exc:  # checked before training, but the disk can still fill up or the folder vanish
        raise ConfigError(one_line(f"--out {config.out}: cannot write the adapter: {exc.strerror or exc}")) from None
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    steps = trainer.state.global_step
    world = trainer.args.world_size
    # Each optimiser step consumes a batch on every process.
    batch = trainer_batch_size(trainer)
    rows_per_step = batch * trainer.args.gradient_accumulation_steps * world
    epochs_done = steps * rows_per_step / len(train_rows)
    summary = {
        "method": config.method,
        "base": config.base,
        "base_dir": str(base_dir),
        "config": config.model_dump(mode="json"),
        "rows": len(train_rows),
        "validation_rows": len(val_rows),
        "dropped_long_rows": dropped + val_dropped,
        "data_hash": data_hash(_trl_columns(train_rows, config.method)),
        "steps": steps,
        "epochs": round(epochs_done, 3),
        "final_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss if not math.isnan(result.training_loss) else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "runtime_s": round(runtime, 2),
        "world_size": world,
        "distributed": str(trainer.args.parallel_mode.value),
        "tokens_per_s": round(tokens * epochs_done / runtime, 1) if runtime > 0 else None,
        "tokens_per_s_per_process": round(tokens * epochs_done / runtime / world, 1) if runtime > 0 else None,
        "device": device_name(),
        "batch_size": batch,
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "mixed_precision": mixed_precision(trainer.args),
        "adapter_spec": f"{config.base}+{config.out}",
    }
    try:
        if main:
            (config.out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    except OSError as exc:
        raise ConfigError(one_line(f"--out {config.out}: cannot write training_summary.json: {exc.strerror}")) from None
    return summary
