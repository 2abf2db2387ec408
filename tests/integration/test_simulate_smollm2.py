"""One 2-turn tree grown with the real embedded SmolLM2 in every role (no network)."""

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.graphs import SimulationConfig, TreeStore, run_conversations
from aloekit.personas import PersonaPool
from aloekit.store import Store

pytestmark = pytest.mark.integration


async def test_two_turn_tree_with_smollm2_everywhere(tmp_path):
    store = Store(tmp_path / "aloe.db")
    pool = PersonaPool(store)
    pool.ensure_seeds("profile")
    pool.ensure_seeds("personality")
    small = {"max_tokens": 32, "temperature": 0}
    config = SimulationConfig.model_validate(
        {
            "conversations": 1,
            "turns": 2,
            "user": {"kind": "user_simulator", "generation": {"max_tokens": 32, "temperature": 0.7, "seed": 1}},
            "inducer": {"kind": "inducer", "generation": small},
            "responders": [
                {"name": "preferred", "kind": "responder", "use_hint": True, "generation": small},
                {"name": "plain", "kind": "responder", "use_hint": False, "generation": small},
            ],
        }
    ).with_backend("all", "local:smollm2")  # the judge keeps its defaults
    run_id = store.start_run("test", {}, 0)
    trees = TreeStore(store)
    [cid] = trees.create_conversations(run_id, pool.sample_pairs(1, seed=0), 2)
    backends = BackendPool(store=store, run_id=run_id)
    summary = await run_conversations(trees, backends, config, run_id)
    assert summary.statuses == {"complete": 1}, summary.failures
    # The default judge labels every turn of the 135M model (the bar: at least 90%).
    assert summary.unlabelled_turns == 0 and summary.turns_saved == 2
    tree = trees.tree(cid)
    assert tree.graph.number_of_nodes() == 7
    texts = [a["text"] for _, a in tree.graph.nodes(data=True) if a["role"] in ("user", "assistant")]
    assert all(t.strip() for t in texts)
    # Both responders of a turn were generated together: the local backend batched them.
    assert 2 in backends.inner("local:smollm2").batch_sizes
    assert set(backends.ledger.as_dict()) == {"user", "inducer", "preferred", "plain", "judge"}
