"""LoRA training on a tiny random model built in-process (no downloads), SFT and DPO."""

import importlib
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from aloekit.agents.backends import BackendPool, from_dicts
from aloekit.errors import AloeError, ConfigError
from aloekit.training import build_train_config, train
from aloekit.training.progress import StepReporter
from aloekit.training.train import cpu_has_bf16_kernels

SFT_ROWS = [{"messages": [{"role": "user", "content": "hello what is the capital of france"},
                          {"role": "assistant", "content": "paris is the capital"}]}] * 6  # fmt: skip
PC_ROWS = [{"prompt": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                        {"role": "user", "content": "what is the capital of france"}],
            "completion": [{"role": "assistant", "content": "paris is the capital"}]}] * 6  # fmt: skip
DPO_ROWS = [{"prompt": [{"role": "user", "content": "hello"}], "chosen": [{"role": "assistant", "content": "hi good"}],
             "rejected": [{"role": "assistant", "content": "bad no"}]}] * 6  # fmt: skip


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lora_and_base_weights(base_dir, adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, adapter_dir)
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    base_after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in model.state_dict().items() if "lora_" not in k}  # fmt: skip
    return original, lora, base_after


@pytest.mark.parametrize(("method", "rows"), [("sft", SFT_ROWS), ("sft", PC_ROWS), ("dpo", DPO_ROWS)])
def test_lora_changes_and_base_does_not(tmp_path, tiny_model_dir, method, rows):
    config = build_train_config(method, data=write(tmp_path / "d.jsonl", rows), base=f"hf:{tiny_model_dir}",
                                out=tmp_path / "adapter", max_steps=3, trl={"learning_rate": 1e-2})  # fmt: skip
    reported: dict[int, float] = {}
    summary = train(config, callbacks=[StepReporter(  # the first loss shown for a step must be that step's
        lambda step, _, logs: "loss" in logs and reported.setdefault(step, logs["loss"]))])  # fmt: skip
    assert summary["steps"] == 3 and summary["rows"] == 6 and summary["final_loss"] is not None
    assert sorted(reported) == [1, 2, 3] and reported[3] == summary["final_loss"]  # each step's own loss
    saved = json.loads((tmp_path / "adapter" / "training_summary.json").read_text())
    assert saved["data_hash"] == summary["data_hash"] and saved["config"]["method"] == method
    # batch_size auto is 2 rows on CPU, without gradient checkpointing.
    assert (saved["device"], saved["batch_size"], saved["gradient_checkpointing"]) == ("cpu", 2, False)
    assert saved["mixed_precision"] == ("bf16" if cpu_has_bf16_kernels() else "no")
    original, lora, base_after = lora_and_base_weights(tiny_model_dir, tmp_path / "adapter")
    # LoRA B matrices start at zero: trained ones are not.
    lora_b = [v for k, v in lora.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    compared = [name for name in original if name in base_after]
    assert len(compared) >= len(original) - 1  # every base weight (the tied head may be listed once)
    for name in compared:
        assert torch.equal(original[name], base_after[name]), name


async def test_adapter_reloads_through_the_hf_backend_and_generates(tmp_path, tiny_model_dir):
    config = build_train_config("sft", data=write(tmp_path / "d.jsonl", SFT_ROWS), base=f"hf:{tiny_model_dir}",
                                out=tmp_path / "adapter", max_steps=2)  # fmt: skip
    train(config)
    pool = BackendPool()
    spec = f"hf:{tiny_model_dir}+{tmp_path / 'adapter'}"
    result = await pool.client(spec).create(
        from_dicts([{"role": "user", "content": "hello"}]), extra_create_args={"max_tokens": 4}
    )
    assert isinstance(pool.inner(spec).model, PeftModel)  # the adapter really sits on the base
    assert isinstance(result.content, str) and result.usage.prompt_tokens > 0


def test_sft_then_dpo_continues_the_adapter(tmp_path, tiny_model_dir):
    base = f"hf:{tiny_model_dir}"
    train(build_train_config("sft", data=write(tmp_path / "s.jsonl", SFT_ROWS), base=base, out=tmp_path / "sft",
                             max_steps=2))  # fmt: skip
    summary = train(build_train_config("dpo", data=write(tmp_path / "d.jsonl", DPO_ROWS), base=base,
                                       out=tmp_path / "dpo", max_steps=2, init_adapter=tmp_path / "sft"))  # fmt: skip
    assert summary["steps"] == 2 and (tmp_path / "dpo" / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no rows to train on"),
        ([{"text": "x"}], "line 1: missing field 'prompt'"),
        ([DPO_ROWS[0], {**DPO_ROWS[0], "chosen": "hi"}], "line 2: field 'chosen' must be a non-empty list"),
        ([{**DPO_ROWS[0], "rejected": [{"role": "user", "content": "x"}]}], "line 1: field 'rejected[0].role'"),
        ([{**DPO_ROWS[0], "prompt": [{"role": "user"}]}], "line 1: field 'prompt[0]' must be an object with a string"),
    ],
)
def test_bad_dpo_data_names_row_and_field(tmp_path, tiny_model_dir, rows, message):
    config = build_train_config("dpo", data=write(tmp_path / "d.jsonl", rows), base=f"hf:{tiny_model_dir}",
                                out=tmp_path / "out")  # fmt: skip
    with pytest.raises(AloeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        train(config)


def test_bad_sft_data(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": "only a question"}]}]
    config = build_train_config("sft", data=write(tmp_path / "d.jsonl", rows), base=f"hf:{tiny_model_dir}",
                                out=tmp_path / "out")  # fmt: skip
    with pytest.raises(AloeError, match="line 1: field 'messages' has no assistant message"):
        train(config)


def test_existing_adapter_is_refused_unless_overwrite(tmp_path, tiny_model_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_config.json").write_text("{}")
    data = write(tmp_path / "d.jsonl", SFT_ROWS)
    with pytest.raises(AloeError, match="already holds an adapter; choose another --out or pass --overwrite"):
        train(build_train_config("sft", data=data, base=f"hf:{tiny_model_dir}", out=tmp_path / "out"))
    summary = train(build_train_config("sft", data=data, base=f"hf:{tiny_model_dir}", out=tmp_path / "out",
                                       overwrite=True, max_steps=1))  # fmt: skip
    assert summary["steps"] == 1


def test_long_rows_are_dropped_and_counted_not_cut(tmp_path, tiny_model_dir):
    long = {"messages": [{"role": "user", "content": "hello " * 300}, {"role": "assistant", "content": "hi"}]}
    config = build_train_config("sft", data=write(tmp_path / "d.jsonl", [*SFT_ROWS, long]), base=f"hf:{tiny_model_dir}",
                                out=tmp_path / "out", max_steps=1, max_length=64)  # fmt: skip
    summary = train(config)
    assert summary["rows"] == 6 and summary["dropped_long_rows"] == 1


def test_config_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="field lora.r"):
        build_train_config("sft", data=tmp_path, base="hf:x", out=tmp_path, lora={"r": 0})
    with pytest.raises(ConfigError, match=r"field trl.no_such_option \(--trl no_such_option=...\): not a SFTConfig"):
        build_train_config("sft", data=tmp_path / "d.jsonl", base="hf:x", out=tmp_path / "out",
                           trl={"no_such_option": 1})  # fmt: skip
    write(tmp_path / "d.jsonl", SFT_ROWS)
    with pytest.raises(AloeError, match="names an adapter"):
        train(build_train_config("sft", data=tmp_path / "d.jsonl", base=f"hf:{tiny_model_dir}+x", out=tmp_path / "o"))
    with pytest.raises(AloeError, match="training data .*none.jsonl: not found"):
        train(build_train_config("sft", data=tmp_path / "none.jsonl", base=f"hf:{tiny_model_dir}", out=tmp_path / "o"))


def test_batch_size_auto_by_device_or_given_once():
    from aloekit.training.train import batch_args

    config = build_train_config("sft", data="d.jsonl", base="local:smollm2", out="o")
    assert config.batch_size == "auto" and "per_device_train_batch_size" not in config.trl
    assert batch_args(config, cuda=False) == {"per_device_train_batch_size": 2}
    assert batch_args(config, cuda=True) == {"per_device_train_batch_size": 32, "auto_find_batch_size": True}
    given = build_train_config("sft", data="d.jsonl", base="local:smollm2", out="o", batch_size=8)
    assert batch_args(given, cuda=True) == {"per_device_train_batch_size": 8}
    own_trl = build_train_config("sft", data="d.jsonl", base="local:smollm2", out="o",
                                 trl={"per_device_train_batch_size": 4})  # fmt: skip
    assert batch_args(own_trl, cuda=True) == {}  # the user's trl value stands
    with pytest.raises(ConfigError, match="batch size set twice"):
        build_train_config(
            "sft", data="d.jsonl", base="local:smollm2", out="o", batch_size=8, trl={"per_device_train_batch_size": 4}
        )
    with pytest.raises(ConfigError, match="--batch-size"):
        build_train_config("sft", data="d.jsonl", base="local:smollm2", out="o", batch_size=0)


@pytest.mark.parametrize("onednn_bf16", [False, True])
def test_cpu_trains_in_bf16_only_where_onednn_has_bf16_kernels(monkeypatch, tmp_path, onednn_bf16):
    """trl's default bf16=True means CPU autocast, a plain loop without oneDNN's kernels (12.5x slower)."""
    from aloekit.training.grpo import GRPOSettings, grpo_args
    from aloekit.training.train import trl_args

    train_module = importlib.import_module("aloekit.training.train")  # the package exports a function `train`
    monkeypatch.setattr(train_module, "cpu_has_bf16_kernels", lambda: onednn_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def args(method, trl=None):
        config = build_train_config(method, data="d.jsonl", base="local:smollm2", out=tmp_path, trl=trl or {})
        return trl_args(config, has_eval=False)

    chosen = [args("sft"), args("dpo"), grpo_args(GRPOSettings(out=tmp_path))]
    assert [(a.bf16, a.fp16) for a in chosen] == [(onednn_bf16, False)] * 3
    # The user's choice stands: either flag alone, with trl picking the other (fp16 alone is not a conflict).
    assert args("dpo", {"bf16": not onednn_bf16}).bf16 is (not onednn_bf16)
    fp16 = [args("dpo", {"fp16": True}), grpo_args(GRPOSettings(out=tmp_path, trl={"fp16": True}))]
    assert [(a.fp16, a.bf16) for a in fp16] == [(True, False)] * 2


def test_checkpointing_is_set_under_the_name_transformers_reads_without_a_deprecation_warning(monkeypatch, tmp_path):
    """Later transformers 5 releases renamed gradient_checkpointing* to activation_checkpointing*; the old names
    warn (and go in 6). On CPU trl's configs do not checkpoint (CUDA's are not built here: they need a device);
    SFT/DPO ask for non-reentrant checkpointing either way."""
    import warnings

    from transformers import TrainingArguments

    from aloekit.training.grpo import GRPOSettings, grpo_args
    from aloekit.training.train import trl_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    renamed = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    config = build_train_config("sft", data="d.jsonl", base="local:smollm2", out=tmp_path, trl={"bf16": False})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*checkpointing.* is deprecated", category=FutureWarning)
        sft, grpo = trl_args(config, has_eval=False), grpo_args(GRPOSettings(out=tmp_path, trl={"bf16": False}))
    assert sft.gradient_checkpointing is False and grpo.gradient_checkpointing is False
    assert sft.gradient_checkpointing_kwargs == {"use_reentrant": False}
    if renamed:
        assert sft.activation_checkpointing is False and sft.activation_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize("name", ["activation", "gradient"])
def test_the_users_checkpointing_under_either_name_stands(monkeypatch, name):
    """Ours goes under the name the installed TrainingArguments has (``activation_*`` in later releases,
    ``gradient_*`` before), each release played here; a field the user set under either name is left alone."""
    from transformers import TrainingArguments

    from aloekit.training.train import checkpointing_args

    fields = {key: value for key, value in TrainingArguments.__dataclass_fields__.items()
              if not key.startswith("activation_checkpointing")}  # fmt: skip
    if name == "activation":
        fields |= {"activation_checkpointing": None, "activation_checkpointing_kwargs": None}
    monkeypatch.setattr(TrainingArguments, "__dataclass_fields__", fields)
    ours = {f"{name}_checkpointing": True, f"{name}_checkpointing_kwargs": {"use_reentrant": False}}
    assert checkpointing_args(True, {"use_reentrant": False}, {}) == ours
    assert checkpointing_args(True, None, {}) == {f"{name}_checkpointing": True}
    for spelling in ("gradient", "activation"):
        assert checkpointing_args(True, {"use_reentrant": False}, {f"{spelling}_checkpointing": False}) == {
            f"{name}_checkpointing_kwargs": {"use_reentrant": False}
        }
        assert checkpointing_args(True, {"a": 1}, {f"{spelling}_checkpointing_kwargs": {}}) == {
            f"{name}_checkpointing": True
        }


def test_cpu_bf16_kernels_are_asked_of_torch_only_when_onednn_is_on(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert cpu_has_bf16_kernels() is True
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert cpu_has_bf16_kernels() is False


def test_shipped_defaults_follow_the_paper():
    config = build_train_config("dpo", data="d.jsonl", base="local:smollm2", out="o")
    assert config.beta == 0.9 and config.max_length == 2048 and config.lora.target_modules == "all-linear"


CHECKPOINTING = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}}


@pytest.mark.parametrize(("method", "rows", "trl"), [
    ("sft", SFT_ROWS, {}), ("sft", PC_ROWS, {}), ("dpo", DPO_ROWS, {}),
    # CUDA's gradient checkpointing, reentrant (the variant that needs input gradients to reach LoRA weights)
    ("sft", SFT_ROWS, CHECKPOINTING), ("dpo", DPO_ROWS, CHECKPOINTING),
])  # fmt: skip
def test_in_memory_only_lora_parameters_move(tmp_path, tiny_model_dir, method, rows, trl):
    """trl's own check: snapshot every parameter, train, compare."""
    from aloekit.training.train import build_trainer, load_model_and_tokenizer

    config = build_train_config(method, data=tmp_path / "d.jsonl", base=f"hf:{tiny_model_dir}", out=tmp_path / "o",
                                max_steps=3, trl={"learning_rate": 1e-2, **trl})  # fmt: skip
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    trainer = build_trainer(config, rows, [], model, tokenizer)
    assert trainer.args.gradient_checkpointing == bool(trl)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all("lora_" in n for n in moved)
    assert any("lora_B" in n for n in moved)


def test_prompt_completion_sft_puts_the_loss_on_the_completion_only(tmp_path, tiny_model_dir):
    from aloekit.training.train import build_trainer, load_model_and_tokenizer, load_rows

    config = build_train_config("sft", data=write(tmp_path / "d.jsonl", PC_ROWS), base=f"hf:{tiny_model_dir}",
                                out=tmp_path / "adapter", max_steps=1)  # fmt: skip
    rows, _ = load_rows(config.data, "sft")
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    trainer = build_trainer(config, rows, [], model, tokenizer)
    example = trainer.train_dataset[0]
    trained = [label for label in example["labels"] if label != -100]  # trl masks what carries no loss
    assert tokenizer.decode(trained).replace(" ", "").startswith("paris")  # the prompt's turns are masked
    assert len(trained) < len(example["input_ids"]) / 2


def test_one_sft_format_per_file(tmp_path, tiny_model_dir):
    config = build_train_config("sft", data=write(tmp_path / "d.jsonl", [PC_ROWS[0], SFT_ROWS[0]]),
                                base=f"hf:{tiny_model_dir}", out=tmp_path / "out")  # fmt: skip
    with pytest.raises(AloeError, match="line 2: a messages row among prompt-completion rows"):
        train(config)


async def test_a_cancelled_training_thread_stops_after_its_step(tmp_path, tiny_model_dir):
    """The demo trains on the CPU thread, which Ctrl-C and SIGTERM never reach: cancelling the awaiting task
    must stop the trainer at its next step, not after all of them."""
    import asyncio
    import threading

    from aloekit.cpu_thread import on_cpu_thread, run_on_cpu_thread
    from aloekit.demo import train_on_cpu_thread
    from aloekit.training.progress import StopWhenSet

    stop, started, steps, threads = threading.Event(), threading.Event(), [], set()

    def report(step, total, logs):
        steps.append(step)
        threads.add(on_cpu_thread())
        started.set()

    config = build_train_config("sft", data=write(tmp_path / "d.jsonl", SFT_ROWS), base=f"hf:{tiny_model_dir}",
                                out=tmp_path / "adapter", max_steps=3000)  # fmt: skip
    task = asyncio.create_task(train_on_cpu_thread(stop, train, config, [StepReporter(report), StopWhenSet(stop)]))
    assert await asyncio.to_thread(started.wait, 300)  # the first step, however loaded the machine
    cancelled_at = max(steps)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stop.is_set()
    await run_on_cpu_thread(lambda: None)  # behind the trainer: what the process waits for before exiting
    assert max(steps) <= cancelled_at + 2 < 3000  # the step under way (and its report), then no more
    assert threads == {True}  # where the demo's models generate
