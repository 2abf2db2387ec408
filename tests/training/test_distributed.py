"""``accelerate launch -m aloekit.training``: two CPU processes (DDP over gloo) both train, in step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from aloekit.store import Store
from tests.training.test_train import SFT_ROWS, write

# Runs the real `python -m aloekit.training` in each process, with one callback added that saves what this
# rank trained: the test can then compare the ranks (the adapter itself is written by rank 0 only).
LAUNCHED = """
import os, runpy, sys
import torch
from transformers import TrainerCallback
import aloekit.training.train  # noqa: F401
train_module = sys.modules["aloekit.training.train"]  # (the package exports a function of the same name)

class SaveRank(TrainerCallback):
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def on_train_end(self, args, state, control, model=None, **kwargs):
        lora = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
        torch.save({"lora": lora, "steps": self.steps, "rank": args.process_index, "world": args.world_size},
                   os.path.join(os.environ["RANK_DIR"], f"rank{args.process_index}.pt"))

build = train_module.build_trainer

def with_save_rank(config, train_rows, val_rows, model, tokenizer, callbacks=None, args=None):
    return build(config, train_rows, val_rows, model, tokenizer, [*(callbacks or []), SaveRank()], args)

train_module.build_trainer = with_save_rank
runpy.run_module("aloekit.training", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_two_processes_train_in_step_and_record_one_run(tmp_path, tiny_model_dir):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate is a dependency of trl"
    launcher = tmp_path / "launched.py"
    launcher.write_text(LAUNCHED)
    data = write(tmp_path / "sft.jsonl", SFT_ROWS + SFT_ROWS[:2])  # 8 rows
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    env = {**os.environ, "ALOE_DB": str(tmp_path / "aloe.db"), "RANK_DIR": str(ranks), "OMP_NUM_THREADS": "1"}
    # accelerate's --cpu starts one process (its multi-CPU mode needs MPI); --multi_gpu starts them with
    # torch.distributed.run, and without CUDA each process trains on the CPU, synchronised over gloo.
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(launcher), "sft", "--data", str(data),
               "--base", f"hf:{tiny_model_dir}", "--out", str(tmp_path / "adapter"), "--max-steps", "3",
               "--trl", "learning_rate=0.01"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    saved = [torch.load(ranks / f"rank{r}.pt") for r in (0, 1)]
    assert [(s["rank"], s["world"], s["steps"]) for s in saved] == [(0, 2, 3), (1, 2, 3)]  # both ranks trained
    assert saved[0]["lora"].keys() == saved[1]["lora"].keys()
    for name, weight in saved[0]["lora"].items():  # DDP kept them in step: identical after every update
        assert torch.equal(weight, saved[1]["lora"][name]), name
    assert any(w.abs().sum() > 0 for k, w in saved[0]["lora"].items() if "lora_B" in k)  # and they did train

    summary = json.loads((tmp_path / "adapter" / "training_summary.json").read_text())
    assert (summary["world_size"], summary["distributed"], summary["steps"]) == (2, "distributed", 3)
    batch = summary["config"]["trl"].get("per_device_train_batch_size", 2)
    assert summary["epochs"] == round(3 * batch * 2 / 8, 3)  # every step took a batch on each process
    assert summary["tokens_per_s_per_process"] == pytest.approx(summary["tokens_per_s"] / 2, rel=0.01)
    runs = Store(tmp_path / "aloe.db").list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "completed"  # one run per launch, by rank 0
    assert runs[0]["command"].startswith("python -m aloekit.training sft --data")
    assert json.loads(runs[0]["config"])["world_size"] == 2


def test_the_trainer_config_exists_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch):
    """Under DeepSpeed ZeRO-3, transformers shards weights at load time only if the trainer's config (which
    carries the DeepSpeed settings) was created first: sft and dpo create it first."""
    import aloekit.training.train  # noqa: F401

    module = sys.modules["aloekit.training.train"]
    order: list[str] = []
    for name in ("trl_args", "load_model"):
        original = getattr(module, name)

        def recorded(*args, _name=name, _original=original, **kwargs):
            order.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)
    config = module.build_train_config("sft", data=write(tmp_path / "d.jsonl", SFT_ROWS), base=f"hf:{tiny_model_dir}",
                                       out=tmp_path / "adapter", max_steps=1)  # fmt: skip
    module.train(config)
    loaded = order.index("load_model")
    assert "trl_args" in order[:loaded] and "trl_args" not in order[loaded:]  # the config the trainer uses came first


def test_grpo_under_a_multi_process_launch_is_refused_in_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from aloekit.cli import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "aloe.db"), "train", "grpo", "--out", str(tmp_path / "g")])
    assert result.exit_code != 0
    assert (
        result.stderr.strip()
        == "error: aloe train grpo runs in one process: start it without accelerate launch / torchrun"
    )
    assert not (tmp_path / "aloe.db").exists() or not Store(tmp_path / "aloe.db").list_runs()
