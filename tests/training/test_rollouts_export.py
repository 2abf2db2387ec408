"""`aloe export rollouts`: stored conversations with a per-message train mask, for verl, OpenRLHF or JSONL."""

from __future__ import annotations

import json

from tests.graphs.scripted import PERSONA
from tests.training.test_environment import make_env


async def stored_rollouts(scripted, tmp_path) -> str:
    """Two GRPO-style conversations of two turns, groups of two replies, scored by the scripted judge."""
    env, db, run_id = make_env(scripted, tmp_path, max_turns=2)
    for position in range(2):
        await env.areset(PERSONA, seed=0, position=position)
        await env.astep(["plain", "a good reply"])
        await env.astep(["good good", "plain"])
    db.close()
    return run_id


async def test_rollouts_mask_the_simulator_and_carry_rewards_and_persona(scripted, tmp_path, run_aloe):
    run_id = await stored_rollouts(scripted, tmp_path)
    proc = run_aloe("--json", "export", "rollouts", "--out", "r.jsonl", "--run", run_id)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["train_rows"] == 2
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    row = rows[0]
    # The path the conversation took (the best reply of each group), the simulator's turns never trained on.
    assert [(m["role"], m["content"], m["train"]) for m in row["messages"]] == [
        ("user", "user message 1", False), ("assistant", "a good reply", True),
        ("user", "user message 2", False), ("assistant", "good good", True),
    ]  # fmt: skip
    assert row["rewards"] == [2.0, 3.0] and row["turns"] == 2 and row["max_turns"] == 2
    assert row["persona"] == {"profile": PERSONA.profile.text, "personality": PERSONA.personality.text}

    proc = run_aloe("export", "rollouts", "--format", "openrlhf", "--out", "o.jsonl")
    assert proc.returncode == 0, proc.stderr
    agent = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert agent["prompt"] == [{"role": "user", "content": "user message 1"}]
    assert json.loads(agent["label"]) == {"persona": PERSONA.describe(), "max_turns": 2}
    assert agent["messages"] == row["messages"]


async def test_verl_rollouts_are_parquet_with_interaction_kwargs(scripted, tmp_path, run_aloe):
    from datasets import Dataset

    await stored_rollouts(scripted, tmp_path)
    proc = run_aloe("export", "rollouts", "--format", "verl", "--out", "v.parquet", "--val-fraction", "0.5")
    assert proc.returncode == 0, proc.stderr
    train, val = (Dataset.from_parquet(str(tmp_path / name)) for name in ("v.parquet", "v.val.parquet"))
    assert len(train) == len(val) == 1
    row = train[0]
    assert row["prompt"] == [{"role": "user", "content": "user message 1"}] and row["data_source"] == "aloekit"
    kwargs = row["extra_info"]["interaction_kwargs"]
    assert kwargs["name"] == "aloekit_simulated_user" and kwargs["persona"] == PERSONA.describe()
    assert [m["train"] for m in row["messages"]] == [False, True, False, True]


async def test_bad_rollout_flags_are_one_line_and_write_nothing(scripted, tmp_path, run_aloe):
    await stored_rollouts(scripted, tmp_path)
    cases = [
        (("rollouts", "--format", "verl", "--out", "v.jsonl"), "error: --out v.jsonl: --format verl writes parquet"),
        (("rollouts", "--format", "rllib", "--out", "x.jsonl"), "error: --format rllib: unknown (use jsonl, verl, "),
        (("sft", "--format", "verl", "--out", "x.jsonl"), "error: --format verl applies to `aloe export rollouts`"),
    ]
    for args, message in cases:
        proc = run_aloe("export", *args)
        assert proc.returncode != 0 and proc.stderr.startswith(message), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob("*.parquet"))
