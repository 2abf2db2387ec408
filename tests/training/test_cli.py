import json

import pytest
from datasets import load_from_disk

from aloekit.testing import StubOpenAIServer, role_aware_reply


def _simulate(run_aloe, n=4, turns=3):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        proc = run_aloe("--json", "simulate", "--conversations", str(n), "--turns", str(turns), "--role",
                        f"all={server.spec()}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["run_id"]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_sft_dpo_tree(run_aloe, tmp_path):
    run_id = _simulate(run_aloe)
    proc = run_aloe("--json", "export", "dpo", "--out", "data/dpo.jsonl", "--run", run_id, "--val-fraction", "0.25")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    train, val = _read(tmp_path / "data/dpo.jsonl"), _read(tmp_path / "data/dpo.val.jsonl")
    assert result["train_rows"] == len(train) and result["validation_rows"] == len(val) == 2
    assert not {r["conversation_id"] for r in train} & {r["conversation_id"] for r in val}
    assert result["skipped"]["identical_pairs"] == 4  # the stub's turn-1 replies are identical
    sft = run_aloe("export", "sft", "--out", "sft.jsonl", "--branch", "rejected")
    assert sft.returncode == 0 and "wrote 12 sft rows" in sft.stdout  # one per labelled turn
    assert all(set(r) == {"prompt", "completion", "conversation_id", "turn"} for r in _read(tmp_path / "sft.jsonl"))
    whole = run_aloe("--json", "export", "sft", "--out", "whole.jsonl", "--whole-conversations")
    assert whole.returncode == 0, whole.stderr
    rows = _read(tmp_path / "whole.jsonl")
    assert len(rows) == 4 and all("messages" in r for r in rows)
    # The stub's judge always prefers the first shown reply: conversations that continued with another
    # reply are cut there and counted.
    assert json.loads(whole.stdout)["skipped"]["cut_conversations"] == sum(r["turns"] < 3 for r in rows)
    secret = "hf_test_SECRET_0123456789"  # the Hub unreachable: one line, the files kept, the token never shown
    offline = run_aloe("export", "sft", "--out", "hub.jsonl", "--push-to-hub", "me/data",
                       env={"HF_TOKEN": secret, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert offline.returncode == 1 and offline.stderr.startswith("error: --push-to-hub me/data: ")
    assert len(offline.stderr.strip().splitlines()) == 1 and secret not in offline.stderr
    assert (tmp_path / "hub.jsonl").is_file()
    # The run's judge was asked in one order only: there is no agreement to require, and the export says so.
    agreed = run_aloe("export", "dpo", "--out", "agreed.jsonl", "--require-agreement")
    assert agreed.returncode == 1 and "12 judged in one order only (--require-agreement needs judge_both_orders)" in (
        agreed.stderr)  # fmt: skip
    tree = run_aloe("export", "tree", "--out", "tree.jsonl", "--hf-dataset", "tree_ds")
    assert tree.returncode == 0, tree.stderr
    rows = _read(tmp_path / "tree.jsonl")
    assert len(rows) == 4 * (1 + 3 * 3) and len(load_from_disk(str(tmp_path / "tree_ds"))["train"]) == len(rows)


def test_export_errors(run_aloe):
    proc = run_aloe("export", "dpo", "--out", "x.jsonl")
    assert proc.returncode == 1 and proc.stderr.startswith("error: nothing to export: 0 conversations")
    proc = run_aloe("export", "dpo", "--out", "x.jsonl", "--push-to-hub", "me/data", env={"HF_TOKEN": ""})
    assert proc.returncode == 1 and "needs a Hugging Face token in HF_TOKEN" in proc.stderr
    proc = run_aloe("export", "dpo", "--out", "x.jsonl", "--run", "nope")
    assert proc.returncode == 1 and "no run 'nope'" in proc.stderr


def test_train_cli_on_tiny_model(run_aloe, tmp_path, tiny_model_dir):
    _simulate(run_aloe)
    assert run_aloe("export", "dpo", "--out", "dpo.jsonl").returncode == 0
    proc = run_aloe("--json", "train", "dpo", "--data", "dpo.jsonl", "--base", f"hf:{tiny_model_dir}", "--out",
                    "adapter", "--max-steps", "2", "--lora-r", "4", "--trl", "learning_rate=0.001")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 2 and summary["config"]["lora"]["r"] == 4
    assert summary["config"]["trl"]["learning_rate"] == 0.001 and summary["config"]["beta"] == 0.9
    again = run_aloe("train", "dpo", "--data", "dpo.jsonl", "--base", f"hf:{tiny_model_dir}", "--out", "adapter")
    assert again.returncode == 1 and "already holds an adapter" in again.stderr and "Traceback" not in again.stderr
    (tmp_path / "bad.jsonl").write_text('{"prompt": []}\n')
    bad = run_aloe("train", "dpo", "--data", "bad.jsonl", "--base", f"hf:{tiny_model_dir}", "--out", "a2")
    assert bad.returncode == 1 and "bad.jsonl: line 1: missing field 'chosen'" in bad.stderr
    runs = json.loads(run_aloe("--json", "runs", "list").stdout)  # bad input is refused before a run row
    assert runs[0]["command"].startswith("aloe --json train dpo") and runs[0]["status"] == "completed"


def test_train_cli_bad_input_is_one_line_and_trains_nothing(run_aloe, tmp_path, tiny_model_dir):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "afile").write_text("x")
    base = ["--data", "d.jsonl", "--base", f"hf:{tiny_model_dir}"]
    for args, needle in [
        (("--out", "a", "--epochs", "-1"), "--epochs"),  # the CLI's own range check, or TrainConfig's
        (("--out", "a", "--max-steps", "0"), "--max-steps"),
        (("--out", "a", "--trl", "learning_rat=1"), "trl.learning_rat (--trl learning_rat=...): not a SFTConfig"),
        (("--out", "afile/sub"), "--out afile/sub: afile is a file, not a folder"),
        (("--out", "a", "--init-adapter", "nope"), "--init-adapter nope: not found"),
        (("--out", "a", "--trl", 'output_dir="elsewhere"'), "set out (--out) instead"),  # once made a stray folder
        (("--out", "a", "--max-length", "8"), "'--max-length': 8 is not in the range 16<="),  # a usage error (2)
        (
            ("--out", "a", "--target-modules", "q_proj,bogus_mod"),
            "--target-modules (lora.target_modules): the base has no module named "
            "bogus_mod (its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
        ),
    ]:
        proc = run_aloe("train", "sft", *base, *args)
        error = proc.stderr.strip().splitlines()[-1]  # a progress line may come first
        assert proc.returncode in (1, 2) and error.startswith("error: ") and needle in error, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "elsewhere").exists()


def test_the_usage_line_of_python_m_aloekit_training_works_when_copied(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "aloekit.training", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)  # fmt: skip

    usage = run("--help").stdout.splitlines()[0]
    assert usage.startswith("Usage: python -m aloekit.training train ")
    copied = run("train", "sft", "--data", "missing.jsonl", "--out", "adapter")  # as the usage line shows it
    assert copied.returncode == 1 and copied.stderr.startswith("error: training data missing.jsonl: not found")
    plain = run("sft", "--data", "missing.jsonl", "--out", "adapter")
    assert plain.returncode == 1 and plain.stderr == copied.stderr


@pytest.mark.parametrize(
    ("cli_seed", "file_text", "top_seed", "expected"),
    [(3, "seed: 7\n", 5, 3), (None, "seed: 7\n", 5, 7), (None, "epochs: 1\n", 5, 5), (None, None, 5, 5)],
    ids=["aloe --seed wins", "the train config's own", "else the top-level one", "no train config"],
)
def test_the_train_configs_seed_is_not_overridden_by_the_top_level_one(tmp_path, cli_seed, file_text, top_seed,
                                                                       expected):  # fmt: skip
    from aloekit.training import build_train_config

    path = None
    if file_text is not None:
        (path := tmp_path / "t.yaml").write_text(file_text)
    # As `aloe train sft|dpo` passes them: `aloe --seed` as a flag, the top-level seed as the default.
    config = build_train_config("sft", path, data=tmp_path / "rows.jsonl", base="local:smollm2", out=tmp_path / "o",
                                seed=cli_seed, default_seed=top_seed)  # fmt: skip
    assert config.seed == expected
