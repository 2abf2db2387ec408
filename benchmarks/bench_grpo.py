"""GRPO step time of ``aloekit.training.grpo`` versus a plain trl GRPO script, same policy, prompts and reward,
each in its own process (target: aloekit within 15% of plain trl), and the share of aloekit's step spent in
the simulated user and the judge.

aloekit runs first; the plain script then trains on the very conversations aloekit's policy answered, step
by step (same lengths, same chat template). Both score replies with the same HTTP call to a stub
OpenAI-compatible judge (zero latency), so the ratio is the cost of aloekit's loop (environments, best-of-n
continuation, tree storage, the user simulator's turn);
the share is measured with the user simulator and judge on that stub, so it is a floor: with real models
serving those roles their calls dominate. The plain script trains in the mixed precision aloekit chose.

Run: ``.venv/bin/python benchmarks/bench_grpo.py [--steps 6] [--base local:smollm2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = r"""
import json, sys, time
from pathlib import Path
import openai

def judge_score(client, reply):
    prompt = "The person wrote:\nhi\n\nThe reply:\n" + reply + "\n\nScore (1-5):"
    answer = client.chat.completions.create(model="stub", messages=[{"role": "user", "content": prompt}])
    text = answer.choices[0].message.content
    return float(next(ch for ch in text if ch in "12345"))
"""

PLAIN_TRL = (
    COMMON
    + r"""
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

base, url, out, steps, slots, group, length, prompts_file, precision = sys.argv[1:10]
steps, slots, group, length = int(steps), int(slots), int(group), int(length)
client = openai.OpenAI(base_url=url, api_key="none")
tokenizer = AutoTokenizer.from_pretrained(base)
tokenizer.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
prompts = json.loads(Path(prompts_file).read_text())  # aloekit's own conversations, step by step, in order

def reward(prompts, completions, **_):
    return [judge_score(client, c[-1]["content"]) for c in completions]

args = GRPOConfig(output_dir=out, max_steps=steps, seed=0, per_device_train_batch_size=group, num_generations=group,
                  gradient_accumulation_steps=slots, steps_per_generation=slots, max_completion_length=length,
                  temperature=1.0, learning_rate=5e-5, logging_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, gradient_checkpointing=False, shuffle_dataset=False,
                  bf16=precision == "bf16", fp16=precision == "fp16")  # aloekit's: the ratio is its loop's cost
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, processing_class=tokenizer, peft_config=peft,
                      train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
started = time.time()
trainer.train()
print(json.dumps({"runtime_s": time.time() - started, "steps": trainer.state.global_step,
                  "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no"}))
"""
)

ALOEKIT = (
    COMMON
    + r"""
from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.evaluation.task import load_eval_personas
from aloekit.graphs import RoleConfig, TreeStore
from aloekit.store import Store
from aloekit.training import grpo
from aloekit.training.grpo import GRPOSettings, build_environments, train_grpo

base, url, out, steps, slots, group, length = sys.argv[1:8]
spec = f"openai:{url}#stub"
settings = GRPOSettings(base=base, out=Path(out) / "adapter", personas=int(slots), turns=3, group=int(group),
                        max_steps=int(steps), max_completion_length=int(length),
                        user=RoleConfig(kind="user_simulator", backend=spec),
                        judge=RoleConfig(kind="alignment_scorer", backend=spec))
Path(out).mkdir(parents=True, exist_ok=True)
store = Store(Path(out) / "aloe.db")
run_id = store.start_run("bench grpo", {}, 0)
envs = build_environments(settings, BackendPool(AloeConfig(), store=store), TreeStore(store), run_id)
spent = {"reward_s": 0.0}
original = grpo.Rollout.reward

def timed(self, *args, **kwargs):
    started = time.time()
    try:
        return original(self, *args, **kwargs)
    finally:
        spent["reward_s"] += time.time() - started

grpo.Rollout.reward = timed
summary = train_grpo(settings, envs, load_eval_personas("builtin")[:8])
print(json.dumps({"runtime_s": summary["runtime_s"], "steps": summary["steps"], "reward_s": spent["reward_s"],
                  "mixed_precision": summary["mixed_precision"]}))
"""
)


def step_prompts(db: Path, slots: int) -> list[list[dict[str, str]]]:
    """The conversation each slot answered at each step of aloekit's run, in step order: the plain script
    trains on exactly these prompts (trl reads an unshuffled dataset ``slots`` prompts per step)."""
    from aloekit.graphs import TreeStore
    from aloekit.store import Store
    from aloekit.training.data import path_turns

    trees = TreeStore(Store(db, readonly=True))
    conversations = sorted(trees.conversations(), key=lambda c: c.position)
    prompts: dict[str, list] = {c.id: [] for c in conversations}
    for cid, prompt, _ in path_turns({c.id: trees.records(c.id) for c in conversations}):
        prompts[cid].append(prompt)
    per_conversation = list(prompts.values())
    # Slots run in step with each other: conversations started together answer their turns together.
    rows = []
    for start in range(0, len(per_conversation), slots):
        batch = per_conversation[start : start + slots]
        for turn in range(max(len(p) for p in batch)):
            rows += [p[turn] for p in batch if turn < len(p)]
    return rows


def run(script: str, args: list[str]) -> dict:
    """Run ``script`` in a fresh process and return the JSON it prints last."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--slots", type=int, default=2, help="Conversations (prompts) per step.")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--base", default="local:smollm2", help="local:smollm2 or hf:PATH.")
    args = parser.parse_args()

    from aloekit.testing import StubOpenAIServer, role_aware_reply
    from aloekit.training.train import resolve_base

    base_dir = str(resolve_base(args.base))
    with StubOpenAIServer(respond=role_aware_reply) as server, tempfile.TemporaryDirectory() as tmp:
        url = server.spec().removeprefix("openai:").split("#")[0]
        common = [str(args.steps), str(args.slots), str(args.group), str(args.max_completion_length)]
        ours = run(ALOEKIT, [f"hf:{base_dir}", url, str(Path(tmp) / "aloekit"), *common])
        prompts = Path(tmp) / "prompts.json"
        prompts.write_text(json.dumps(step_prompts(Path(tmp) / "aloekit" / "aloe.db", args.slots)))
        plain_args = [base_dir, url, str(Path(tmp) / "plain"), *common, str(prompts), ours["mixed_precision"]]
        plain = run(PLAIN_TRL, plain_args)
    per_step = {name: r["runtime_s"] / r["steps"] for name, r in (("plain trl", plain), ("aloekit", ours))}
    for name, seconds in per_step.items():
        print(f"{name:10s} {seconds:.2f} s/step over {args.steps} steps ({args.slots} prompts x {args.group} replies)")
    print(f"mixed precision: aloekit {ours['mixed_precision']}, plain trl {plain['mixed_precision']}")
    ratio = per_step["aloekit"] / per_step["plain trl"]
    share = ours["reward_s"] / ours["runtime_s"]
    print(f"step time aloekit / plain trl: {ratio:.2f} (target <= 1.15)")
    print(f"share of aloekit's step in the simulated user and judge (stub server, zero latency): {share:.1%}")


if __name__ == "__main__":
    main()
