"""``aloe train grpo`` end to end on a tiny model, user and judge on the stub server; and its bad input."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from aloekit.cli import cli
from aloekit.cpu_thread import call_on_cpu_thread, on_cpu_thread
from aloekit.graphs import TreeStore
from aloekit.store import Store
from aloekit.testing import StubOpenAIServer, role_aware_reply
from aloekit.training import grpo


def test_grpo_cli_trains_stores_rollouts_and_reports(run_aloe, tmp_path, tiny_model_dir):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        spec = server.spec()
        proc = run_aloe("--json", "train", "grpo", "--base", f"hf:{tiny_model_dir}", "--out", "grpo",
                        "--personas", "2", "--turns", "2", "--group", "2", "--max-steps", "2",
                        "--role", f"user={spec}", "--role", f"judge={spec}", "--max-completion-length", "8",
                        "--role", f"profile={spec}", "--profile-weight", "0.5", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 2 and len(summary["rewards_per_step"]) == 2 and summary["conversations_started"] == 2
    assert (tmp_path / "grpo" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "grpo" / "training_summary.json").read_text())["run_id"] == summary["run_id"]
    store = Store(tmp_path / "aloe.db", readonly=True)
    run = store.get_run(summary["run_id"])
    grpo = json.loads(run["config"])["grpo"]
    assert run["status"] == "completed" and grpo["group"] == 2
    assert grpo["profile"]["kind"] == "profile_inference" and grpo["profile_weight"] == 0.5
    conversations = TreeStore(store).conversations(summary["run_id"])
    assert [c.status for c in conversations] == ["complete", "complete"]
    # Eval personas are never trained on.
    from aloekit.evaluation.task import eval_persona_ids

    held_out = eval_persona_ids("builtin")
    assert all(c.persona.profile.id not in held_out and c.persona.personality.id not in held_out for c in conversations)
    # The reward is the judge's score plus half the profile scorer's: both stub answers are 1-5.
    rewards = [c.reward for record in TreeStore(store).records(conversations[0].id) for c in record.candidates]
    assert all(1.5 <= r <= 7.5 for r in rewards)
    profile_prompts = [json.dumps(call["messages"]) for call in store.calls(role="profile")]
    assert profile_prompts and all("The assistant's latest reply:" in p for p in profile_prompts)
    shown = run_aloe("trees", "show", conversations[0].id)
    assert shown.returncode == 0 and "Just got back from the market" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "1"], "Invalid value for '--group'"),
        (["--role", "boss=x"], "unknown role 'boss' in --role (use user, judge or profile; --base sets the policy)"),
        (["--trl", "num_generations=8"], "trl.num_generations is set by aloe train grpo's own settings"),
        (["--base", "local:smollm2+adapters/x"], "names an adapter"),
        (["--init-adapter", "nowhere"], "--init-adapter nowhere: not found"),
        (["--role", "judge=nosuch:x"], "unknown backend prefix 'nosuch'"),
        (["--resume"], "--resume: no GRPO checkpoint in grpo (save them with --save-steps N)"),
    ],
)
def test_grpo_bad_input_is_one_line_and_records_no_run(run_aloe, tmp_path, args, message):
    proc = run_aloe("train", "grpo", "--out", "grpo", "--max-steps", "1", *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "grpo").exists()
    if (tmp_path / "aloe.db").exists():
        runs = Store(tmp_path / "aloe.db", readonly=True).conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        assert runs == 0


def test_a_resume_with_another_setup_is_refused_before_any_run(run_aloe, tmp_path, tiny_model_dir):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        common = ["train", "grpo", "--base", f"hf:{tiny_model_dir}", "--out", "grpo", "--personas", "2", "--turns",
                  "2", "--max-completion-length", "4", "--role", f"user={server.spec()}",
                  "--role", f"judge={server.spec()}", "--save-steps", "1"]  # fmt: skip
        first = run_aloe(*common, "--group", "2", "--max-steps", "1", timeout=600)
        assert first.returncode == 0, first.stderr[-2000:]
        other = run_aloe(*common, "--group", "3", "--max-steps", "2", "--resume", "--overwrite", timeout=600)
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert other.stderr == ("error: --resume: grpo/checkpoint-1 was trained with another setup: group was 2, now 3; "
                            "resume with the same one (only --max-steps and --save-steps may change), or train into "
                            "another --out\n")  # fmt: skip
    assert Store(tmp_path / "aloe.db", readonly=True).conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_grpo_trains_on_the_main_thread_made_the_cpu_thread(tmp_path, tiny_model_dir, monkeypatch):
    """The trainer stays where Ctrl-C reaches it, and its rollouts' in-process models run there too (one thread
    for torch's CPU work, aloekit.cpu_thread): a model call there runs at once, not on the worker thread."""
    seen = {}

    def fake_train_grpo(settings, envs, personas, **kwargs):
        seen["main"] = threading.current_thread() is threading.main_thread()
        seen["cpu thread"] = on_cpu_thread()
        seen["model calls run here"] = call_on_cpu_thread(threading.get_ident) == threading.get_ident()
        raise KeyboardInterrupt  # Ctrl-C during training

    monkeypatch.setattr(grpo, "train_grpo", fake_train_grpo)
    with StubOpenAIServer(respond=role_aware_reply) as server:
        roles = ["--role", f"user={server.spec()}", "--role", f"judge={server.spec()}"]
        out = ["--out", str(tmp_path / "grpo")]
        args = ["--db", str(tmp_path / "aloe.db"), "train", "grpo", "--base", f"hf:{tiny_model_dir}", *out, *roles]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130, result.output
    assert seen == {"main": True, "cpu thread": True, "model calls run here": True}
    assert not on_cpu_thread()  # the command over, this thread is an ordinary one again
    (run,) = Store(tmp_path / "aloe.db", readonly=True).list_runs()
    assert run["status"] == "interrupted"
