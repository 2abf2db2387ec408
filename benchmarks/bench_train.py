"""Tokens/s of ``aloe train`` versus a plain trl script, same data, model and settings, each in its own
process; the ratio shows what aloekit's wrapper and defaults cost.

On CPU both train at batch 2 (target: ours within 10% of plain trl). On CUDA, aloekit runs with its defaults
(``--batch-size auto``) and plain trl with each of ``--batches``, keeping its best (target: ours >= 70% of
plain trl at its best batch size).

Plain trl trains in aloekit's precision by default, so the ratio is the wrapper's cost. ``--plain-precision
trl-default`` leaves trl's own default instead (``bf16=True``, CPU autocast included), so the ratio shows what
aloekit's choice of precision buys: on a CPU without oneDNN's bf16 kernels, float32 instead of bf16.

Run: ``.venv/bin/python benchmarks/bench_train.py [--method dpo|sft] [--steps 10] [--plain-precision same|trl-default]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_TRL = r"""
import json, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

method, base, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
batches = [int(b) for b in sys.argv[6].split(",")]
precision = sys.argv[7]  # "bf16", "fp16" or "no": aloekit's; "default": trl's own
rows = [json.loads(line) for line in open(data)]
tokenizer = AutoTokenizer.from_pretrained(base)
cuda = torch.cuda.is_available()
for batch in batches:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32)
    common = dict(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, lr_scheduler_type="cosine",
                  logging_steps=1, max_length=2048, seed=0, save_strategy="no", report_to="none", use_cpu=not cuda)
    if not cuda:
        common["gradient_checkpointing"] = False
    if precision != "default":
        common.update(bf16=precision == "bf16", fp16=precision == "fp16")
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    if method == "dpo":
        args = DPOConfig(learning_rate=5e-5, beta=0.9, **common)
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft)
    else:
        args = SFTConfig(learning_rate=2e-4, **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft)
    started = time.time()
    trainer.train()
    print(json.dumps({"batch": batch, "runtime_s": time.time() - started, "steps": trainer.state.global_step,
                      "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no"}), flush=True)
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
"""


def make_rows(n: int, method: str) -> list[dict]:
    """Multi-turn rows shaped like aloekit's exports (DPO preference pairs, or SFT conversations)."""
    rows = []
    for i in range(n):
        prompt = []
        for t in range(1 + i % 3):
            hobby = ["hiking", "baking", "painting"][t]
            prompt += [{"role": "user", "content": f"I spent the weekend {hobby} again, turn {t}."},
                       {"role": "assistant", "content": "That sounds lovely, tell me more!"}]  # fmt: skip
        prompt.append({"role": "user", "content": f"Anyway, what would you do on a free Saturday? ({i})"})
        chosen = [{"role": "assistant", "content": "I'd go for a trail run, then bake bread like you!"}]
        if method == "sft":
            rows.append({"messages": prompt + chosen})
        else:
            rows.append({"prompt": prompt, "chosen": chosen,
                         "rejected": [{"role": "assistant", "content": "I do not have free time."}]})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["dpo", "sft"], default="dpo")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", default="8,16,32,64", help="plain trl's batch sizes tried on CUDA")
    parser.add_argument("--plain-precision", choices=["same", "trl-default"], default="same",
                        help="plain trl in aloekit's precision, or in trl's own default (bf16)")  # fmt: skip
    args = parser.parse_args()
    import torch

    from aloekit.agents.backends.local import converted_model_dir, find_smollm2_gguf

    cuda = torch.cuda.is_available()
    batches = args.batches if cuda else "2"
    base = converted_model_dir(find_smollm2_gguf())
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(256, args.method)))
        started = time.time()
        ours = subprocess.run(
            [sys.executable, "-m", "aloekit.cli", "--json", "train", args.method, "--data", str(data), "--base",
             "local:smollm2", "--out", str(tmp_path / "ours"), "--max-steps", str(args.steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        ours_total = time.time() - started
        summary = json.loads(ours.stdout)
        plain_precision = summary["mixed_precision"] if args.plain_precision == "same" else "default"
        plain = subprocess.run(
            [sys.executable, "-c", PLAIN_TRL, args.method, str(base), str(data), str(tmp_path / "plain"),
             str(args.steps), batches, plain_precision],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        plain_runs = [json.loads(line) for line in plain.stdout.splitlines() if line.startswith('{"batch"')]
    # aloekit's tokens/s counts every row's tokens times the epochs done; plain trl's is scaled the same way.
    tokens_per_row = summary["tokens_per_s"] * summary["runtime_s"] / (summary["steps"] * summary["batch_size"])
    ours_rate = summary["tokens_per_s"]
    print(f"{args.method.upper()}, {args.steps} steps on SmolLM2-135M ({summary['device']}), "
          f"~{tokens_per_row:.0f} tokens per row")  # fmt: skip
    print(f"aloe train {args.method} (batch {summary['batch_size']}, gradient checkpointing "
          f"{summary['gradient_checkpointing']}, mixed precision {summary['mixed_precision']}): "
          f"{summary['runtime_s']:.1f}s training "
          f"({ours_total:.1f}s with start-up) = {ours_rate:.0f} tokens/s")  # fmt: skip
    best = 0.0
    for run in plain_runs:
        rate = tokens_per_row * run["steps"] * run["batch"] / run["runtime_s"]
        best = max(best, rate)
        print(
            f"plain trl, batch {run['batch']:>3}, mixed precision {run['precision']}: {run['runtime_s']:.1f}s "
            f"training = {rate:.0f} tokens/s"
        )
    target = "0.70 on CUDA, vs plain trl's best batch" if cuda else "0.90"
    print(f"ratio (ours / plain{' best' if cuda else ''}): {ours_rate / best:.3f} (target >= {target})")


if __name__ == "__main__":
    main()
