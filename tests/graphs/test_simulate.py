import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

from aloekit.agents.backends import BackendPool, Budget
from aloekit.config import AloeConfig
from aloekit.graphs import SimulationConfig, TreeStore, run_conversations
from aloekit.store import Store
from aloekit.testing import StubOpenAIServer, role_aware_reply
from tests.graphs.scripted import scripted_setup
from tests.helpers import ThreadHopRecorder, count_rows, seeded_run, wait_for


def _new_run(store, config, n):
    return seeded_run(store, n, config.turns, config.seed, {"simulation_resolved": config.model_dump(mode="json")})


def assert_exact(store, run_id, n, turns):
    """Every conversation complete, with exactly the expected turns and nodes, none duplicated."""
    trees = TreeStore(store)
    conversations = trees.conversations(run_id)
    assert len(conversations) == n
    assert {c.status for c in conversations} == {"complete"}
    per_conversation = store.conn.execute("SELECT COUNT(*) FROM turns GROUP BY conversation_id").fetchall()
    assert per_conversation == [(turns,)] * n
    # The turn records are the trees: no second copy as node rows.
    assert store.conn.execute("SELECT COUNT(*) FROM tree_nodes").fetchone()[0] == 0
    for c in conversations:
        tree = trees.tree(c.id)
        assert tree.graph.number_of_nodes() == 1 + 3 * turns
        assert len(tree.continued_path()) == 1 + 2 * turns


async def test_many_conversations_complete_and_persist(tmp_path, scripted):
    config, backends, _ = scripted_setup(scripted, turns=3)
    store = Store(tmp_path / "aloe.db")
    run_id = _new_run(store, config, 5)
    summary = await run_conversations(TreeStore(store), backends, config, run_id)
    assert summary.statuses == {"complete": 5} and summary.turns_saved == 15 and summary.finished
    assert_exact(store, run_id, 5, 3)
    # Rerunning a finished run touches nothing.
    again = await run_conversations(TreeStore(store), backends, config, run_id)
    assert again.turns_saved == 0
    assert_exact(store, run_id, 5, 3)


async def test_unlabelled_turns_are_counted(tmp_path, scripted):
    config, backends, _ = scripted_setup(scripted, judge=lambda m, o: "no idea", turns=2)
    store = Store(tmp_path / "aloe.db")
    summary = await run_conversations(TreeStore(store), backends, config, _new_run(store, config, 2))
    assert summary.unlabelled_turns == 4


async def test_budget_stops_cleanly_and_resume_finishes(tmp_path, scripted):
    config, backends, _ = scripted_setup(scripted, turns=3, concurrency=2)
    store = Store(tmp_path / "aloe.db")
    run_id = _new_run(store, config, 4)
    backends.budget = Budget(max_calls=25)  # 5 calls a turn: room for at most 5 of the 12 turns
    summary = await run_conversations(TreeStore(store), backends, config, run_id)
    assert set(summary.statuses) <= {"incomplete", "complete"} and summary.statuses.get("incomplete", 0) >= 1
    assert 1 <= summary.turns_saved <= 5 and backends.budget.calls == 25
    saved = store.conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    assert saved == summary.turns_saved
    reason = TreeStore(store).conversations(run_id, statuses=("incomplete",))[0].error
    assert reason == "call budget of 25 spent"
    config, fresh_backends, _ = scripted_setup(scripted, turns=3)
    summary = await run_conversations(TreeStore(store), fresh_backends, config, run_id)
    assert summary.finished and summary.turns_saved == 12 - saved
    assert_exact(store, run_id, 4, 3)


async def test_a_failing_conversation_does_not_stop_the_others(tmp_path, scripted):
    def user(messages, options):
        if "veterinary nurse" in messages[0]["content"]:
            raise ValueError("model crashed on this persona")
        return "hello there"

    config, backends, clients = scripted_setup(scripted, turns=2)
    clients["user"].respond = user
    store = Store(tmp_path / "aloe.db")
    run_id = _new_run(store, config, 3)
    summary = await run_conversations(TreeStore(store), backends, config, run_id)
    assert summary.statuses == {"complete": 2, "failed": 1}
    failed = TreeStore(store).conversations(run_id, statuses=("failed",))[0]
    assert "model crashed on this persona" in failed.error and failed.turns_done == 0
    assert len(summary.failures) == 1


async def test_faulty_server_every_conversation_complete_or_failed_with_reason(tmp_path):
    store = Store(tmp_path / "aloe.db")
    with StubOpenAIServer(respond=role_aware_reply, fault_rate=0.3, slow_s=1.0, seed=3) as server:
        config = SimulationConfig(turns=3, concurrency=6).with_backend("all", server.spec())
        run_id = _new_run(store, config, 6)
        aloe_config = AloeConfig.model_validate(
            {"backend": {"timeout_s": 0.5, "max_retries": 2, "backoff_base_s": 0.01}}
        )
        trees = TreeStore(store)
        saved_before: dict[str, int] = {}

        def on_turn(cid, turn):
            saved_before[cid] = turn

        summary = await run_conversations(trees, BackendPool(aloe_config, store=store), config, run_id, on_turn)
    assert set(summary.statuses) <= {"complete", "failed"}
    assert any(r.get("status") == "error" for r in store.db["llm_calls"].rows)  # faults really happened
    for c in trees.conversations(run_id):
        if c.status == "failed":
            assert c.error.startswith(server.spec())  # the backend and the reason
        assert c.turns_done == saved_before.get(c.id, 0)  # every saved turn is still there
        assert trees.tree(c.id).graph.number_of_nodes() == 1 + 3 * c.turns_done


@pytest.mark.slow
def test_sigkill_mid_run_five_times_then_resume(tmp_path):
    """Kill `aloe simulate` 5 times, each after it saved a new turn; resuming ends with exact, duplicate-free trees."""
    n, turns = 6, 3
    db = tmp_path / "aloe.db"

    with StubOpenAIServer(respond=role_aware_reply, latency_s=0.05) as server:
        env = {**os.environ, "ALOE_DB": str(db)}

        def start(*args):
            return subprocess.Popen([sys.executable, "-m", "aloekit.cli", "-q", "simulate", *args], env=env,
                                    cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

        proc = start("--conversations", str(n), "--turns", str(turns), "--concurrency", "2", "--role",
                     f"all={server.spec()}")  # fmt: skip
        kills, seen = 0, 0
        while kills < 5:
            wait_for(lambda p=proc, n=seen: count_rows(db, "turns") > n or p.poll() is not None, "a new turn was saved")
            if proc.poll() is not None:
                break  # finished before this kill: the checks below still hold
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills, seen = kills + 1, count_rows(db, "turns")
            run_id = Store(db).conn.execute("SELECT id FROM runs").fetchone()[0]
            proc = start("--resume", run_id)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        run_id = Store(db).conn.execute("SELECT id FROM runs").fetchone()[0]
        final = subprocess.run([sys.executable, "-m", "aloekit.cli", "--json", "simulate", "--resume", run_id],
                               env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert final.returncode == 0, final.stderr
        assert json.loads(final.stdout)["statuses"] == {"complete": n}
    assert kills >= 5, "the run finished before it could be killed 5 times; slow the stub down"
    assert_exact(Store(db), run_id, n, turns)


async def test_the_turn_loop_stays_on_the_event_loop_so_call_order_is_deterministic(tmp_path, scripted):
    # A node or branch run in a thread lets timing reorder concurrent conversations' calls (and thus a replay
    # backend's answers): the same-seed exports once differed under load.
    config, backends, _ = scripted_setup(scripted, turns=2, concurrency=3)
    store = Store(tmp_path / "aloe.db")
    recorder = ThreadHopRecorder()
    asyncio.get_running_loop().set_default_executor(recorder)
    summary = await run_conversations(TreeStore(store), backends, config, _new_run(store, config, 3))
    assert summary.finished and recorder.jobs == []
