"""The simulated user as an RL environment, on scripted roles: turn order, the turn limit, best-of-n, trees."""

from __future__ import annotations

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.errors import AloeError
from aloekit.graphs import RoleConfig, TreeStore
from aloekit.graphs.simulate import build_role
from aloekit.store import Store
from aloekit.training.environment import SimulatedUserEnv, best_index
from tests.graphs.scripted import PERSONA
from tests.helpers import ScriptedClient


def user(messages, options):
    # The simulator's own earlier messages are its assistant turns: count them to number this one.
    return f"user message {sum(m['role'] == 'assistant' for m in messages) + 1}"


def judge(messages, options):
    """Score = the number of times "good" appears in the reply, capped to 1-5."""
    reply = messages[-1]["content"].split("The reply:\n", 1)[1].split("\n\nScore", 1)[0]
    return str(min(5, 1 + reply.count("good")))


def make_env(scripted, tmp_path, max_turns=2, store=True):
    pool = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}))
    user_role = build_role(
        pool, "user", RoleConfig(kind="user_simulator", backend=scripted("env-user", ScriptedClient(user)))
    )
    judge_role = build_role(
        pool, "judge", RoleConfig(kind="alignment_scorer", backend=scripted("env-judge", ScriptedClient(judge)))
    )
    if not store:
        return SimulatedUserEnv(user_role, judge_role, max_turns=max_turns), None, None
    db = Store(tmp_path / "aloe.db")
    run_id = db.start_run("train grpo", {}, 0)
    env = SimulatedUserEnv(user_role, judge_role, max_turns=max_turns, trees=TreeStore(db), run_id=run_id)
    return env, db, run_id


async def test_turns_alternate_and_done_comes_at_the_turn_limit(scripted, tmp_path):
    env, db, run_id = make_env(scripted, tmp_path, max_turns=2)
    opening = await env.areset(PERSONA, seed=3)
    assert opening == [{"role": "user", "content": "user message 1"}] and env.turn == 1
    done, next_message, reward, info = await env.astep("a good reply")
    assert (done, next_message, reward) == (False, "user message 2", 2.0) and info["turn"] == 1
    assert [m["role"] for m in env.messages()] == ["user", "assistant", "user"]
    done, next_message, reward, info = await env.astep("plain")
    assert done and next_message is None and reward == 1.0 and env.done
    rows = db.conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    with pytest.raises(AloeError, match="the conversation is over"):
        await env.astep("one too many")
    assert db.conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == rows  # nothing written
    (conversation,) = TreeStore(db).conversations(run_id)
    assert TreeStore(db).tree(conversation.id).graph.number_of_nodes() == 1 + 2 * 2  # user + reply per turn
    assert conversation.kind == "rollout" and conversation.status == "complete" and conversation.turns_done == 2


async def test_a_group_continues_with_its_best_scored_reply(scripted, tmp_path):
    env, db, run_id = make_env(scripted, tmp_path, max_turns=2)
    await env.areset(PERSONA)
    done, _, reward, info = await env.astep(["plain", "good good", "good"])
    assert not done and info["rewards"] == [1.0, 3.0, 2.0] and info["continued"] == 1 and reward == 3.0
    assert env.messages()[1] == {"role": "assistant", "content": "good good"}
    (conversation,) = TreeStore(db).conversations(run_id)
    graph = TreeStore(db).tree(conversation.id).graph
    nodes = sorted((node_id, a) for node_id, a in graph.nodes(data=True) if a["turn"] == 1)
    assert [a["role"] for _, a in nodes] == ["assistant", "assistant", "assistant", "user"]
    chosen = {a["text"]: (a["chosen"], a["label"], a["data"]["reward"]) for _, a in nodes if a["role"] == "assistant"}
    assert chosen == {
        "plain": (False, "rejected", 1.0),
        "good good": (True, "preferred", 3.0),
        "good": (False, "rejected", 2.0),
    }


async def test_given_rewards_are_used_as_is(scripted, tmp_path):
    env, _, _ = make_env(scripted, tmp_path, store=False)
    await env.areset(PERSONA)
    _, _, reward, info = await env.astep(["a", "b"], rewards=[0.2, 0.7])
    assert info["continued"] == 1 and reward == 0.7
    with pytest.raises(AloeError, match="2 replies and 1 rewards"):
        await env.astep(["a", "b"], rewards=[0.1])


def test_the_synchronous_wrappers_run_on_one_loop(scripted, tmp_path):
    env, _, _ = make_env(scripted, tmp_path, max_turns=1, store=False)
    assert env.reset(PERSONA) == [{"role": "user", "content": "user message 1"}]
    assert env.step("good").done
    env.close()


def test_best_index_prefers_the_first_of_equal_rewards_and_ignores_unscored():
    assert best_index([2.0, 3.0, 3.0]) == 1
    assert best_index([None, 1.5, None]) == 1
    assert best_index([None, None]) == 0


def test_bad_construction_is_one_line(scripted, tmp_path):
    env, _, _ = make_env(scripted, tmp_path, store=False)
    with pytest.raises(AloeError, match="max_turns must be at least 1"):
        SimulatedUserEnv(env.user, env.judge, max_turns=0)
    with pytest.raises(AloeError, match="call reset"):
        env.messages()


async def test_a_failed_simulator_turn_leaves_the_episode_as_it_was(scripted, tmp_path):
    calls = {"n": 0}

    def flaky_user(messages, options):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulator down")
        return user(messages, options)

    pool = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}))
    user_role = build_role(
        pool, "user", RoleConfig(kind="user_simulator", backend=scripted("flaky", ScriptedClient(flaky_user)))
    )
    judge_role = build_role(
        pool, "judge", RoleConfig(kind="alignment_scorer", backend=scripted("env-judge2", ScriptedClient(judge)))
    )
    db = Store(tmp_path / "aloe.db")
    run_id = db.start_run("train grpo", {}, 0)
    env = SimulatedUserEnv(user_role, judge_role, max_turns=2, trees=TreeStore(db), run_id=run_id)
    await env.areset(PERSONA)
    with pytest.raises(Exception, match="simulator down"):
        await env.astep("good")
    assert env.turn == 1 and env.messages() == [{"role": "user", "content": "user message 1"}]
    assert db.conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 0  # nothing saved for the failed step
    done, message, _, _ = await env.astep("good")  # the retry answers the same message
    assert not done and message == "user message 2"


async def test_the_profile_term_adds_the_weighted_inference_score_to_the_reward(scripted, tmp_path):
    seen = []

    def profile(messages, options):
        """RLPA's profile reward: 5 when the reply names the person's hobby, else 1."""
        seen.append(messages)
        reply = messages[-1]["content"].split("The assistant's latest reply:\n", 1)[1]
        return "5" if "climb" in reply else "1"

    env, db, run_id = make_env(scripted, tmp_path, max_turns=2)
    pool = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}))
    env.profile = build_role(
        pool, "profile", RoleConfig(kind="profile_inference", backend=scripted("env-profile", ScriptedClient(profile)))
    )
    env.profile_weight = 0.75
    await env.areset(PERSONA, seed=0)
    await env.astep("first reply")
    seen.clear()
    # The judge prefers "good good" (3 vs 1); the profile term (0.75 x 1 vs 0.75 x 5) tips it to the climber.
    done, _, reward, info = await env.astep(["good good", "how was the climb?"])
    assert info["rewards"] == [3.75, 4.75] and info["continued"] == 1 and reward == 4.75
    assert info["profile_scores"] == [1.0, 5.0]
    # The profile scorer sees the persona and the whole conversation, not only the last message.
    system, prompt = seen[0][0]["content"], seen[0][1]["content"]
    assert PERSONA.profile.text in system and "User: user message 1\nAssistant: first reply" in prompt
    record = TreeStore(db).records(TreeStore(db).conversations(run_id)[0].id)[-1]
    assert [c.reward for c in record.candidates] == [3.75, 4.75] and len(record.verdict.raw) == 2
