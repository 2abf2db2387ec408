import asyncio
import os
import re
import signal
import subprocess
import sys

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.errors import AloeError
from aloekit.evaluation import (
    EvalConfig,
    EvalStore,
    compute_metrics,
    create_eval_conversations,
    load_eval_personas,
    run_evaluation,
)
from aloekit.graphs import TreeStore, run_conversations
from aloekit.store import Store
from aloekit.testing import StubOpenAIServer, role_aware_reply
from tests.conftest import SHARED_DATA
from tests.graphs.scripted import scripted_setup
from tests.helpers import ScriptedClient, ThreadHopRecorder, count_rows, seeded_run, wait_for

PERSONALITIES = [p.personality.text for p in load_eval_personas("builtin")[:4]]


def user(messages, options):
    return f"user message {sum(m['role'] == 'assistant' for m in messages) + 1}"


def model(messages, options):
    assert all("Profile:" not in m["content"] for m in messages)  # the model under test never sees the persona
    return f"reply to {messages[-1]['content']}"


def scorer(messages, options):
    """Score = turn, +1 for personas 1 and 3; persona 0 gets an unparsable answer at turn 2, twice."""
    system, prompt = messages[0]["content"], messages[-1]["content"]
    turn = int(re.search(r"user message (\d+)", prompt).group(1))
    persona = next(i for i, text in enumerate(PERSONALITIES) if text in system)
    if persona == 0 and turn == 2:
        return "I cannot say."
    return f"Score: {turn + (persona % 2)}"


def setup(scripted, tmp_path, mode="live", **overrides):
    specs = {name: scripted(f"{name}-{mode}-{id(fn)}", ScriptedClient(fn))
             for name, fn in (("user", user), ("model", model), ("judge", scorer))}  # fmt: skip
    config = EvalConfig(model=specs["model"], mode=mode, personas=4, turns=3, **overrides)
    config = config.with_backend("user", specs["user"]).with_backend("judge", specs["judge"])
    store = Store(tmp_path / "aloe.db")
    return store, config, BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store)


async def test_live_scripted_end_to_end(tmp_path, scripted):
    store, config, backends = setup(scripted, tmp_path)
    run_id = store.start_run("eval", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    recorder = ThreadHopRecorder()  # a graph step in a thread would let timing reorder the personas' calls
    asyncio.get_running_loop().set_default_executor(recorder)
    summary = await run_evaluation(store, backends, config, run_id)
    assert recorder.jobs == []
    assert summary.statuses == {"complete": 4} and summary.turns_saved == 12 and summary.unscored == 1
    m = compute_metrics(EvalStore(store).scores(run_id), 3)
    # AL(1) = mean(1, 2, 1, 2); AL(2) = mean(3, 2, 3) with persona 0 unscored; AL(3) = mean(3, 4, 3, 4)
    assert m.al == pytest.approx([1.5, 8 / 3, 3.5]) and m.scored == [4, 3, 4] and m.unscored == 1
    assert m.avg == pytest.approx((1.5 + 8 / 3 + 3.5) / 3) and m.ir == pytest.approx(1.0)
    record = EvalStore(store).records(f"{run_id}-0000")[1]
    assert record.score.score is None and record.score.raw == ["I cannot say.", "I cannot say."]
    assert record.score.retried and len(record.score.prompt_hash) == 16
    # The transcript is also a linear tree for the viewer.
    tree = TreeStore(store).get(f"{run_id}-0000")
    nodes = store.conn.execute("SELECT COUNT(*) FROM tree_nodes WHERE conversation_id = ?", [tree.id]).fetchone()[0]
    assert nodes == 1 + 2 * 3


async def test_replay_uses_the_stored_user_turns(tmp_path, scripted):
    sim_config, sim_backends, _ = scripted_setup(scripted, turns=3)
    store = Store(tmp_path / "aloe.db")
    sim_run = seeded_run(store, 4, 3)
    await run_conversations(TreeStore(store), sim_backends, sim_config, sim_run)

    judge = scripted(f"judge-replay-{id(tmp_path)}", ScriptedClient(lambda m, o: "4/5"))
    model_spec = scripted(f"model-replay-{id(tmp_path)}", ScriptedClient(model))
    config = EvalConfig(model=model_spec, mode="replay", replay_run=sim_run, turns=3).with_backend("judge", judge)
    run_id = store.start_run("eval", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    backends = BackendPool(AloeConfig(), store=store)
    summary = await run_evaluation(store, backends, config, run_id)
    assert summary.statuses == {"complete": 4}
    assert "user" not in backends.ledger.as_dict()  # no user simulator in replay mode
    sim_users = [
        [r.user_message for r in TreeStore(store).records(c.id)] for c in TreeStore(store).conversations(sim_run)
    ]
    eval_users = [
        [r.user_message for r in EvalStore(store).records(c.id)] for c in TreeStore(store).conversations(run_id)
    ]
    assert eval_users == sim_users
    assert compute_metrics(EvalStore(store).scores(run_id), 3).al == [4.0, 4.0, 4.0]


async def test_replay_keeps_each_personas_own_length(tmp_path, scripted):
    from aloekit.personas import PersonaPool

    sim_config, sim_backends, _ = scripted_setup(scripted, turns=3)
    store = Store(tmp_path / "aloe.db")
    pool = PersonaPool(store)
    pool.ensure_seeds("profile")
    pool.ensure_seeds("personality")
    sim_run = store.start_run("test", {}, 0)
    TreeStore(store).create_conversations(sim_run, pool.sample_pairs(3, seed=0), [1, 3, 2])
    await run_conversations(TreeStore(store), sim_backends, sim_config, sim_run)
    judge = scripted(f"judge-len-{id(tmp_path)}", ScriptedClient(lambda m, o: "4"))
    config = EvalConfig(model=scripted(f"model-len-{id(tmp_path)}", ScriptedClient(model)), mode="replay",
                        replay_run=sim_run, turns=3).with_backend("judge", judge)  # fmt: skip
    run_id = store.start_run("eval", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    await run_evaluation(store, BackendPool(AloeConfig(), store=store), config, run_id)
    # The shortest source conversation (1 turn) no longer cuts the others down to 1 turn.
    assert [c.max_turns for c in TreeStore(store).conversations(run_id)] == [1, 3, 2]
    assert compute_metrics(EvalStore(store).scores(run_id), 3).scored == [3, 2, 1]


async def test_oracle_baseline_tells_the_model_the_persona(tmp_path, scripted):
    seen = []

    def oracle_model(messages, options):
        seen.append(messages[0]["content"])
        return "hi"

    store, config, backends = setup(scripted, tmp_path, baseline="oracle")
    config = config.model_copy(update={"model": scripted(f"oracle-{id(seen)}", ScriptedClient(oracle_model))})
    run_id = store.start_run("eval", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    await run_evaluation(store, backends, config, run_id)
    assert seen and all(text.startswith("You are chatting with this person:\nProfile:") for text in seen)


def test_eval_config_errors(tmp_path):
    with pytest.raises(AloeError, match="unknown role 'model'"):
        EvalConfig(model="x").with_backend("model", "y")
    store = Store(tmp_path / "aloe.db")
    with pytest.raises(AloeError, match="replay mode needs --replay-run"):
        create_eval_conversations(store, store.start_run("x", {}, 0), EvalConfig(model="x", mode="replay"))
    # A live run ignored a replay run it was given (even one that does not exist), without a word.
    with pytest.raises(
        AloeError, match=r"^replay run nope \(--replay-run or \[evaluation\] replay_run\) is for --mode"
    ):
        create_eval_conversations(store, store.start_run("x", {}, 0), EvalConfig(model="x", replay_run="nope"))
    with pytest.raises(AloeError, match="missing profile_eval.jsonl"):
        load_eval_personas(tmp_path)


def test_builtin_eval_set_is_ours_and_stable():
    personas = load_eval_personas("builtin")
    assert len(personas) == 40 and len({p.id for p in personas}) == 40
    assert [p.id for p in personas] == [p.id for p in load_eval_personas("builtin")]


def test_the_first_eval_personas_are_different_people():
    """`--personas N` takes the first N: they spread over the profiles and personalities (the files are
    profile-major, so a plain cross product made the first 10 two profiles' variants)."""
    personas = load_eval_personas("builtin")
    assert len({p.profile.id for p in personas[:8]}) == 8
    assert len({p.personality.id for p in personas[:5]}) == 5
    first10 = personas[:10]
    assert max(sum(p.profile.id == q.profile.id for q in first10) for p in first10) == 2
    assert max(sum(p.personality.id == q.personality.id for q in first10) for p in first10) == 2
    assert {(p.profile.id, p.personality.id) for p in personas} == {
        (a, b) for a in {p.profile.id for p in personas} for b in {p.personality.id for p in personas}
    }


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the paper's eval files are not at {SHARED_DATA}")
def test_paper_eval_files_load_as_exactly_100_personas():
    personas = load_eval_personas(SHARED_DATA)
    assert len(personas) == 100 and len({p.id for p in personas}) == 100
    assert len({p.profile.id for p in personas[:20]}) == 20  # the first 20 are 20 different profiles
    # Training keeps out every persona of the files: all 7 personalities, not only the 5 the benchmark pairs.
    from aloekit.evaluation.task import eval_persona_ids

    assert len(eval_persona_ids(SHARED_DATA)) == 20 + 7


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_scores(tmp_path):
    """Kill a running `aloe eval` with SIGKILL, resume it, and get exactly the uninterrupted run's scores."""
    with StubOpenAIServer(respond=role_aware_reply, latency_s=0.1) as server:
        spec = server.spec()
        args = ["eval", "--model", spec, "--role", f"user={spec}", "--role", f"judge={spec}", "--personas", "6",
                "--turns", "4", "--concurrency", "2", "--seed", "3"]  # fmt: skip

        def aloe(db, *extra):
            env = {**os.environ, "ALOE_DB": str(tmp_path / db)}
            return subprocess.Popen([sys.executable, "-m", "aloekit.cli", "-q", *extra], env=env, cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

        reference = aloe("ref.db", *args)
        assert reference.wait(timeout=120) == 0
        proc = aloe("killed.db", *args)
        wait_for(lambda: count_rows(tmp_path / "killed.db", "eval_turns") > 0, "a turn was saved", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_id = Store(tmp_path / "killed.db").conn.execute("SELECT id FROM runs").fetchone()[0]
        saved = Store(tmp_path / "killed.db").conn.execute("SELECT COUNT(*) FROM eval_turns").fetchone()[0]
        assert 0 < saved < 24
        resumed = aloe("killed.db", "eval", "--resume", run_id)
        assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()

    def scores(db):
        store = Store(tmp_path / db)
        run = store.conn.execute("SELECT id FROM runs").fetchone()[0]
        evals = EvalStore(store)  # records compared unpacked: text ids follow the order texts were first saved
        return evals.scores(run), [r.model_dump() for c in evals.trees.conversations(run) for r in evals.records(c.id)]

    ref_scores, ref_rows = scores("ref.db")
    got_scores, got_rows = scores("killed.db")
    assert got_scores == ref_scores and sum(len(v) for v in got_scores.values()) == 24

    def texts(rows):
        return [(r["user_message"], r["reply"]) for r in rows]

    assert texts(got_rows) == texts(ref_rows)
