"""Tokens/s of ``aloe train dpo`` versus a plain trl script, same data, model and settings, each in its own
process; the ratio shows what aloekit's wrapper costs (target: within 10%).

Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 10]``
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
from trl import DPOConfig, DPOTrainer

base, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [json.loads(line) for line in open(data)]
tokenizer = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
args = DPOConfig(output_dir=out, max_steps=steps, learning_rate=5e-5, per_device_train_batch_size=2,
                 lr_scheduler_type="cosine", logging_steps=1, beta=0.9, max_length=2048, seed=0,
                 gradient_checkpointing=False, save_strategy="no", report_to="none", use_cpu=True)
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                     processing_class=tokenizer, peft_config=peft)
started = time.time()
trainer.train()
print(json.dumps({"runtime_s": time.time() - started, "steps": trainer.state.global_step}))
"""


def make_rows(n: int) -> list[dict]:
    """Multi-turn DPO rows shaped like aloekit's exports."""
    rows = []
    for i in range(n):
        prompt = []
        for t in range(1 + i % 3):
            hobby = ["hiking", "baking", "painting"][t]
            prompt += [{"role": "user", "content": f"I spent the weekend {hobby} again, turn {t}."},
                       {"role": "assistant", "content": "That sounds lovely, tell me more!"}]  # fmt: skip
        prompt.append({"role": "user", "content": f"Anyway, what would you do on a free Saturday? ({i})"})
        rows.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "I'd go for a trail run, then bake bread like you!"}],
            "rejected": [{"role": "assistant", "content": "I do not have free time."}],
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from aloekit.agents.backends.local import converted_model_dir, find_smollm2_gguf

    base = converted_model_dir(find_smollm2_gguf())
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "dpo.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(40)))
        # Same data, seed, steps and batch size in both runs, so both process the same rows.
        started = time.time()
        ours = subprocess.run(
            [sys.executable, "-m", "aloekit.cli", "--json", "train", "dpo", "--data", str(data), "--base",
             "local:smollm2", "--out", str(tmp_path / "ours"), "--max-steps", str(args.steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        ours_total = time.time() - started
        summary = json.loads(ours.stdout)
        started = time.time()
        plain = subprocess.run(
            [sys.executable, "-c", PLAIN_TRL, str(base), str(data), str(tmp_path / "plain"), str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        plain_total = time.time() - started
        plain_result = json.loads(plain.stdout.strip().splitlines()[-1])
    tokens = summary["tokens_per_s"] * summary["runtime_s"]
    ours_rate, plain_rate = tokens / summary["runtime_s"], tokens / plain_result["runtime_s"]
    print(f"DPO, {args.steps} steps x batch 2 on SmolLM2-135M (CPU), ~{tokens:.0f} tokens")
    for name, runtime, total, rate in (
        ("aloe train dpo", summary["runtime_s"], ours_total, ours_rate),
        ("plain trl     ", plain_result["runtime_s"], plain_total, plain_rate),
    ):
        print(f"{name}: {runtime:.1f}s training ({total:.1f}s with start-up) = {rate:.0f} tokens/s")
    print(f"ratio (ours / plain): {ours_rate / plain_rate:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
