"""LoRA fine-tuning with trl + peft: thin entry points over trl's own SFTConfig/DPOConfig and trainers."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aloekit.errors import AloeError, ConfigError
from aloekit.training.data import data_hash

logger = logging.getLogger(__name__)

Method = Literal["sft", "dpo"]


class LoraSettings(BaseModel):
    """peft LoRA settings."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, gt=0)
    """Rank."""
    alpha: int = Field(default=32, gt=0)
    """Scaling numerator (lora_alpha)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the LoRA path."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt; ``all-linear`` adapts every linear layer but the output head."""


class TrainConfig(BaseModel):
    """One training run. Defaults come from ``aloekit/training/defaults/{method}.yaml``."""

    model_config = ConfigDict(extra="forbid")

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
    epochs: float = 1.0
    """Passes over the data when ``max_steps`` is -1."""
    seed: int = 0
    """Seed for trl/transformers."""
    lora: LoraSettings = LoraSettings()
    """LoRA settings."""
    max_length: int = Field(default=2048, gt=0)
    """Longest tokenised row; longer rows are dropped and counted, never silently truncated."""
    beta: float = 0.9
    """DPO temperature (the paper's 0.9)."""
    trl: dict[str, Any] = {}
    """Any other ``SFTConfig``/``DPOConfig`` field (learning_rate, per_device_train_batch_size...)."""


def default_config(method: Method) -> dict[str, Any]:
    """The shipped YAML defaults for ``method``."""
    text = (resources.files("aloekit.training") / "defaults" / f"{method}.yaml").read_text()
    return yaml.safe_load(text)


def build_train_config(method: Method, file: Path | None = None, **overrides: Any) -> TrainConfig:
    """Shipped defaults < YAML/TOML ``file`` < ``overrides``; None values are ignored and the ``lora``
    and ``trl`` tables are merged key by key."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            if value is None:
                continue
            out[key] = {**base.get(key, {}), **value} if key in ("lora", "trl") and isinstance(value, dict) else value
        return out

    data = default_config(method)
    if file is not None:
        from aloekit.config import read_config_file

        data = merge(data, read_config_file(file))
    data = merge(data, {**overrides, "method": method})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"train config: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


# Data -------------------------------------------------------------------------------------------------


def _check_messages(value: Any, where: str, field: str, roles: set[str]) -> None:
    if not isinstance(value, list) or not value:
        raise AloeError(f"{where}: field '{field}' must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise AloeError(f"{where}: field '{field}[{i}]' must be an object with a string 'content'")
        if message.get("role") not in roles:
            raise AloeError(
                f"{where}: field '{field}[{i}].role' must be one of {sorted(roles)}, got {message.get('role')!r}"
            )


def validate_rows(rows: list[dict[str, Any]], method: Method, source: str) -> None:
    """Check rows are in trl's conversational format for ``method``; errors name the row and field."""
    if not rows:
        raise AloeError(f"{source}: no rows to train on")
    chat_roles = {"system", "user", "assistant"}
    for number, row in enumerate(rows, start=1):
        where = f"{source}: row {number}"
        if not isinstance(row, dict):
            raise AloeError(f"{where}: expected an object")
        if method == "sft":
            shape = "prompt-completion" if "prompt" in row or "completion" in row else "messages"
            first_shape = "prompt-completion" if "prompt" in rows[0] or "completion" in rows[0] else "messages"
            if shape != first_shape:
                raise AloeError(f"{where}: a {shape} row among {first_shape} rows (use one SFT format per file)")
            if shape == "prompt-completion":
                for name in ("prompt", "completion"):
                    if name not in row:
                        raise AloeError(f"{where}: missing field '{name}' (prompt-completion SFT rows need both)")
                _check_messages(row["prompt"], where, "prompt", chat_roles)
                _check_messages(row["completion"], where, "completion", {"assistant"})
                continue
            if "messages" not in row:
                raise AloeError(
                    f'{where}: missing fields: SFT rows are {{"prompt": [...], "completion": [...]}} '
                    'or {"messages": [...]}'
                )
            _check_messages(row["messages"], where, "messages", chat_roles)
            if not any(m["role"] == "assistant" for m in row["messages"]):
                raise AloeError(f"{where}: field 'messages' has no assistant message to learn from")
        else:
            for name in ("prompt", "chosen", "rejected"):
                if name not in row:
                    raise AloeError(f"{where}: missing field '{name}' (DPO rows need prompt, chosen, rejected)")
            _check_messages(row["prompt"], where, "prompt", chat_roles)
            _check_messages(row["chosen"], where, "chosen", {"assistant"})
            _check_messages(row["rejected"], where, "rejected", {"assistant"})


def load_rows(path: Path, method: Method) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) rows from a .jsonl file or a ``datasets`` folder, validated."""
    if not path.exists():
        raise AloeError(f"training data not found: {path}")
    if path.is_dir():
        from datasets import load_from_disk

        try:
            saved = load_from_disk(str(path))
        except Exception as exc:
            raise AloeError(f"{path}: not a dataset saved with --hf-dataset ({exc})") from None
        splits = saved if hasattr(saved, "keys") else {"train": saved}
        train = [dict(r) for r in splits["train"]] if "train" in splits else []
        val = [dict(r) for r in splits["validation"]] if "validation" in splits else []
    else:
        train, val = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                train.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AloeError(f"{path}: row {number}: invalid JSON: {exc.msg}") from None
        val_path = path.with_name(f"{path.stem}.val{path.suffix}")
        if val_path.is_file():
            val = [json.loads(line) for line in val_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    validate_rows(train, method, str(path))
    if val:
        validate_rows(val, method, f"{path} (validation)")
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


def resolve_base(spec: str) -> Path:
    """The float model folder behind a base spec (``local:smollm2`` is converted from its GGUF once)."""
    from aloekit.agents.backends.local import LOCAL_MODELS, converted_model_dir, find_smollm2_gguf

    prefix, _, target = spec.partition(":")
    if "+" in target:
        raise AloeError(f"base {spec!r} names an adapter: give the plain base and pass --init-adapter instead")
    if prefix == "local" and (target in LOCAL_MODELS or target.endswith(".gguf")):
        return converted_model_dir(find_smollm2_gguf(None if target in LOCAL_MODELS else target))
    if prefix == "hf" and target:
        path = Path(target).expanduser()
        if not (path / "config.json").is_file():
            raise AloeError(f"base model not found or not a transformers model folder: {target}")
        return path
    raise AloeError(f"unsupported base {spec!r}: use local:smollm2 or hf:/path/to/model")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write over an adapter unless asked to."""
    if (out / "adapter_config.json").exists() and not overwrite:
        raise AloeError(f"{out} already holds an adapter; choose another --out or pass --overwrite")


def load_model_and_tokenizer(base_dir: Path) -> tuple[Any, Any]:
    """Float32 on CPU (bf16 on CUDA) and a tokenizer with a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype), tokenizer


def trl_args(config: TrainConfig, has_eval: bool) -> Any:
    """trl's own SFTConfig or DPOConfig for this run."""
    import torch
    from trl import DPOConfig, SFTConfig

    cuda = torch.cuda.is_available()
    common: dict[str, Any] = {
        "output_dir": str(config.out),
        "max_steps": config.max_steps,
        "num_train_epochs": config.epochs,
        "seed": config.seed,
        "max_length": config.max_length,
        # trl turns gradient checkpointing on by default; on CPU it costs 15-25% and saves nothing we need.
        "gradient_checkpointing": cuda,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not cuda,
        "eval_strategy": "epoch" if has_eval else "no",
        **config.trl,
    }
    cls, extra = (SFTConfig, {}) if config.method == "sft" else (DPOConfig, {"beta": config.beta})
    try:
        return cls(**extra, **common)
    except TypeError as exc:  # an unknown key in `trl:`; name it instead of showing a traceback
        raise ConfigError(f"train config: {cls.__name__} rejected the options: {exc}") from None


def build_trainer(
    config: TrainConfig, train_rows: list[dict[str, Any]], val_rows: list[dict[str, Any]], model: Any, tokenizer: Any,
    callbacks: list[Any] | None = None,
) -> Any:  # fmt: skip
    """The trl trainer with a peft LoRA (or the ``init_adapter`` made trainable).

    For DPO the reference is the model with the adapter disabled (``ref_model=None`` under peft), or,
    when continuing from ``init_adapter``, that adapter as it was before DPO.
    """
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import DPOTrainer, SFTTrainer

    peft_config = None
    if config.init_adapter is not None:
        if not (config.init_adapter / "adapter_config.json").is_file():
            raise AloeError(f"--init-adapter {config.init_adapter}: no adapter_config.json there")
        model = PeftModel.from_pretrained(model, str(config.init_adapter), is_trainable=True)
    else:
        peft_config = LoraConfig(
            r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules, task_type="CAUSAL_LM",
        )  # fmt: skip
    train = Dataset.from_list(_trl_columns(train_rows, config.method))
    val = Dataset.from_list(_trl_columns(val_rows, config.method)) if val_rows else None
    args = trl_args(config, has_eval=val is not None)
    kwargs = {"model": model, "args": args, "train_dataset": train, "eval_dataset": val,
              "processing_class": tokenizer, "peft_config": peft_config, "callbacks": callbacks}  # fmt: skip
    trainer = SFTTrainer(**kwargs) if config.method == "sft" else DPOTrainer(ref_model=None, **kwargs)
    if callbacks:  # the caller shows progress itself: drop transformers' own printing
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    return trainer


def train(
    config: TrainConfig, callbacks: list[Any] | None = None, on_status: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run one LoRA training and write the adapter and ``training_summary.json`` into ``config.out``."""
    status = on_status or (lambda text: logger.info(text))
    check_output_dir(config.out, config.overwrite)
    train_rows, val_rows = load_rows(config.data, config.method)
    status(f"resolving base {config.base}")
    base_dir = resolve_base(config.base)
    model, tokenizer = load_model_and_tokenizer(base_dir)
    train_rows, dropped, tokens = drop_long_rows(train_rows, tokenizer, config.method, config.max_length)
    val_rows, val_dropped, _ = drop_long_rows(val_rows, tokenizer, config.method, config.max_length)
    if dropped or val_dropped:
        logger.warning("dropped %d rows longer than max_length=%d tokens (raise --max-length to keep them)",
                       dropped + val_dropped, config.max_length)  # fmt: skip
    if not train_rows:
        raise AloeError(f"{config.data}: every row is longer than max_length={config.max_length} tokens")
    trainer = build_trainer(config, train_rows, val_rows, model, tokenizer, callbacks)
    status(f"training {config.method} on {len(train_rows)} rows")
    started = time.time()
    result = trainer.train()
    runtime = time.time() - started
    config.out.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(config.out))
    tokenizer.save_pretrained(str(config.out))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    steps = trainer.state.global_step
    epochs_done = (
        steps * trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps / len(train_rows)
    )
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
        "tokens_per_s": round(tokens * epochs_done / runtime, 1) if runtime > 0 else None,
        "adapter_spec": f"{config.base}+{config.out}",
    }
    (config.out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
