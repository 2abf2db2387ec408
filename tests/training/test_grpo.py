"""GRPO with the simulated user in the loop, on a tiny model and scripted user and judge."""

from __future__ import annotations

import json

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.errors import ConfigError
from aloekit.evaluation.task import load_eval_personas
from aloekit.graphs import RoleConfig, TreeStore
from aloekit.store import Store
from aloekit.training.grpo import GRPOSettings, Rollout, build_environments, grpo_args, train_grpo
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
