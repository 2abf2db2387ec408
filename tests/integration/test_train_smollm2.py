"""5 DPO steps on the real SmolLM2 from data exported by a scripted simulation, then a chat through the adapter."""

import json

import pytest

from aloekit.agents.backends import BackendPool, from_dicts
from aloekit.graphs import TreeStore, run_conversations
from aloekit.store import Store
from aloekit.training import build_train_config, dpo_rows, train
from tests.graphs.scripted import scripted_setup
from tests.helpers import seeded_run

pytestmark = pytest.mark.integration


async def test_dpo_on_smollm2_then_chat(tmp_path, scripted):
    config, backends, _ = scripted_setup(scripted, turns=3)
    store = Store(tmp_path / "aloe.db")
    run_id = seeded_run(store, 4, 3)
    trees = TreeStore(store)
    await run_conversations(trees, backends, config, run_id)
    rows = dpo_rows({c.id: trees.records(c.id) for c in trees.conversations(run_id)})
    assert len(rows) >= 8
    data = tmp_path / "dpo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train(build_train_config("dpo", data=data, base="local:smollm2", out=tmp_path / "adapter", max_steps=5))
    assert summary["steps"] == 5 and summary["final_loss"] is not None and summary["tokens_per_s"] > 0
    client = BackendPool().client(f"local:smollm2+{tmp_path / 'adapter'}")
    messages = from_dicts([{"role": "user", "content": "What is the capital of France?"}])
    result = await client.create(messages, extra_create_args={"max_tokens": 16, "temperature": 0})
    assert result.content.strip() and result.usage.completion_tokens > 0
