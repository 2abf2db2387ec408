"""GRPO with the simulated user in the loop, on a tiny model and scripted user and judge."""

from __future__ import annotations

import json

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.errors import ConfigError
from aloekit.evaluation.task import load_eval_personas
from aloekit.graphs import RoleConfig, TreeStore
from aloekit.secrets import register_url_secrets
from aloekit.store import Store
from aloekit.training.grpo import (
    GRPOSettings,
    Rollout,
    build_environments,
    check_resumable,
    grpo_args,
    resume_key,
    train_grpo,
)
from tests.helpers import ScriptedClient


def user(messages, options):
    return f"user message {sum(m['role'] == 'assistant' for m in messages) + 1}"


def judge(messages, options):
    """A deterministic reward that differs between sampled replies: 1 + length mod 5."""
    reply = messages[-1]["content"].split("The reply:\n", 1)[1].split("\n\nScore", 1)[0]
    return str(1 + len(reply) % 5)


@pytest.fixture
def grpo_run(scripted, tmp_path, tiny_model_dir, monkeypatch):
    from trl import GRPOTrainer

    seen: dict[str, list] = {"rollouts": [], "advantages": []}
    original_rollout, original_score = Rollout.rollout_func, GRPOTrainer._generate_and_score_completions

    def record_rollout(self, prompts, trainer):
        conversations = [self.messages(p) for p in prompts]
        out = original_rollout(self, prompts, trainer)
        seen["rollouts"].append((trainer.processing_class, conversations, out))
        return out

    def record_advantages(self, inputs):
        out = original_score(self, inputs)
        seen["advantages"].append(out["advantages"].tolist())
        return out

    monkeypatch.setattr(Rollout, "rollout_func", record_rollout)
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", record_advantages)
    settings = GRPOSettings(
        base=f"hf:{tiny_model_dir}", out=tmp_path / "grpo", personas=2, turns=2, group=2, max_steps=3,
        max_completion_length=6,
        user=RoleConfig(kind="user_simulator", backend=scripted("g-user", ScriptedClient(user))),
        judge=RoleConfig(kind="alignment_scorer", backend=scripted("g-judge", ScriptedClient(judge))),
    )  # fmt: skip
    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("train grpo", {}, 0)
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store)
    envs = build_environments(settings, backends, TreeStore(store), run_id)
    personas = load_eval_personas("builtin")[:3]
    summary = train_grpo(settings, envs, personas)
    return settings, store, run_id, summary, seen


def test_grpo_trains_on_the_policys_replies_only_and_continues_with_the_best(grpo_run):
    settings, store, run_id, summary, seen = grpo_run
    assert summary["steps"] == 3 and len(summary["rewards_per_step"]) == 3
    assert (settings.out / "adapter_config.json").is_file()
    saved = json.loads((settings.out / "training_summary.json").read_text())
    assert saved["data_hash"] == summary["data_hash"] and saved["config"]["group"] == 2
    # Two slots: turns 1 and 2 of the first two conversations, then turn 1 of the next two.
    assert summary["conversations_started"] == 4
    # The simulator's text is only ever prompt: the prompt is the whole conversation, chat-templated, and the
    # completion is the policy's own sampled tokens after it.
    for tokenizer, conversations, out in seen["rollouts"]:
        assert len(out["completion_ids"]) == settings.personas * settings.group
        for conversation, prompt_ids in zip(conversations, out["prompt_ids"], strict=True):
            assert conversation[-1]["role"] == "user" and conversation[-1]["content"].startswith("user message")
            expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)  # fmt: skip
            assert list(prompt_ids) == list(expected)
    turns = [[c[-1]["content"] for c in conversations] for _, conversations, _ in seen["rollouts"]]
    assert turns[0] == ["user message 1"] * 4 and turns[1] == ["user message 2"] * 4
    # Advantages are computed per group of G replies to one turn: each group's sum to zero.
    for advantages in seen["advantages"]:
        for start in range(0, len(advantages), settings.group):
            assert sum(advantages[start : start + settings.group]) == pytest.approx(0.0, abs=1e-5)


def test_grpo_rollouts_are_trees_whose_continued_reply_scored_best(grpo_run):
    settings, store, run_id, summary, seen = grpo_run
    trees = TreeStore(store)
    conversations = trees.conversations(run_id)
    assert [c.kind for c in conversations] == ["rollout"] * 4
    assert sorted(c.status for c in conversations) == ["complete", "complete", "incomplete", "incomplete"]
    for conversation in conversations:
        for record in trees.records(conversation.id):
            rewards = [c.reward for c in record.candidates]
            assert len(rewards) == settings.group and rewards[record.continued] == max(rewards)
    # The second turn's prompt holds the reply the first turn continued with, as the assistant's message.
    first_turn = trees.records(conversations[0].id)[0]
    chosen = first_turn.candidates[first_turn.continued].text
    _, second, _ = seen["rollouts"][1]
    assert {"role": "assistant", "content": chosen} == second[0][1]


def test_settings_owned_by_grpo_cannot_be_set_through_trl(tmp_path):
    settings = GRPOSettings(out=tmp_path / "x", trl={"num_generations": 8})
    with pytest.raises(ConfigError, match="trl.num_generations is set by aloe train grpo's own settings"):
        grpo_args(settings)


def test_a_resumed_grpo_run_continues_from_its_checkpoint(scripted, tmp_path, tiny_model_dir, monkeypatch):
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    common = {"base": f"hf:{tiny_model_dir}", "out": tmp_path / "grpo", "personas": 2, "turns": 2, "group": 2,
              "max_completion_length": 6, "save_steps": 2,
              "user": RoleConfig(kind="user_simulator", backend=scripted("r-user", ScriptedClient(user))),
              "judge": RoleConfig(kind="alignment_scorer",
                                  backend=scripted("r-judge", ScriptedClient(judge)))}  # fmt: skip
    store = Store(tmp_path / "aloe.db")
    personas = load_eval_personas("builtin")[:4]

    def run(settings, callbacks=None):
        run_id = store.start_run("train grpo", {}, 0)
        backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store)
        return train_grpo(settings, build_environments(settings, backends, TreeStore(store), run_id), personas,
                          callbacks=callbacks)  # fmt: skip

    first = run(GRPOSettings(**common, max_steps=2))
    checkpoint = tmp_path / "grpo" / "checkpoint-2"
    saved = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert json.loads((checkpoint / "aloekit_rollout.json").read_text())["started"] == 2

    class AtStart(TrainerCallback):
        """The adapter the resumed run starts training from."""

        weights: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            AtStart.weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            AtStart.step = state.global_step

    generations = []
    original = Rollout.rollout_func
    monkeypatch.setattr(Rollout, "rollout_func", lambda self, p, t: generations.append(1) or original(self, p, t))
    resumed = run(GRPOSettings(**common, max_steps=4, resume=True, overwrite=True), callbacks=[AtStart()])
    assert resumed["resumed_from"] == str(checkpoint) and resumed["steps"] == 4
    assert len(generations) == 2  # steps 3 and 4 only: steps 1-2 came from the checkpoint
    assert set(AtStart.weights) == set(saved)
    assert all(torch.equal(AtStart.weights[k], saved[k]) for k in saved)
    # The reward history carries on, and the next conversations take the next personas.
    assert resumed["rewards_per_step"][:2] == first["rewards_per_step"] and len(resumed["rewards_per_step"]) == 4
    assert resumed["conversations_started"] == 4
    with pytest.raises(ConfigError, match="--resume: no GRPO checkpoint in"):
        run(GRPOSettings(**{**common, "out": tmp_path / "empty"}, max_steps=1, resume=True))
    # Only --max-steps and --save-steps may change on a resume: not the setup, nor the models' files.
    with pytest.raises(ConfigError, match=r"checkpoint-4 was trained with another setup: temperature was 1.0, now 0.5"):
        run(GRPOSettings(**common, max_steps=6, resume=True, overwrite=True, temperature=0.5))
    key = resume_key(GRPOSettings(**common, max_steps=6))
    assert list(key["files"]) == [f"hf:{tiny_model_dir}"]  # the scripted roles are not in-process
    check_resumable(checkpoint, key)
    with pytest.raises(ConfigError, match=rf"the files of hf:{tiny_model_dir} changed since \(retrained or replaced\)"):
        check_resumable(checkpoint, {**key, "files": {f"hf:{tiny_model_dir}": "0" * 16}})
    # A role moved to another backend is named as such (settings are compared before files).
    moved = {**common, "judge": RoleConfig(kind="alignment_scorer", backend=f"hf:{tiny_model_dir}")}
    with pytest.raises(ConfigError, match=r"another setup: judge.backend was \"scripted:r-judge\", now \"hf:"):
        check_resumable(checkpoint, resume_key(GRPOSettings(**moved, max_steps=6)))
    # What a checkpoint records has its secrets redacted; a damaged record is one line, not a traceback.
    register_url_secrets("http://user:sekrit-password@127.0.0.1:9/v1")
    served = {**common, "judge": RoleConfig(kind="alignment_scorer",
                                            backend="openai:http://user:sekrit-password@127.0.0.1:9/v1#m")}  # fmt: skip
    assert "sekrit-password" not in json.dumps(resume_key(GRPOSettings(**served, max_steps=6)))
    (checkpoint / "aloekit_rollout.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"aloekit_rollout.json: expected a JSON object"):
        check_resumable(checkpoint, key)
