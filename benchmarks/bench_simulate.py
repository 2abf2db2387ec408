"""Simulation throughput: 32 conversations x 3 turns against a stub OpenAI-compatible server adding 100 ms
per call, at concurrency 1 versus 32 (the authors' code is strictly sequential); then the framework's
own overhead per LLM call against an in-process backend that answers instantly.

Run: ``.venv/bin/python benchmarks/bench_simulate.py`` (targets: ratio >= 20, median overhead < 5 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autogen_core.models import CreateResult, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient

from aloekit.agents.backends import BackendPool, register_backend
from aloekit.agents.backends.messages import to_dicts
from aloekit.config import AloeConfig
from aloekit.graphs import SimulationConfig, TreeStore, run_conversations
from aloekit.personas import PersonaPool
from aloekit.store import Store
from aloekit.testing import role_aware_reply


class InstantClient(ReplayChatCompletionClient):
    """Answers every role prompt at once, so what is timed is aloekit itself."""

    def __init__(self) -> None:
        super().__init__(["unused"])

    async def create(self, messages, **kwargs) -> CreateResult:  # type: ignore[override]
        text = role_aware_reply(to_dicts(messages))
        return CreateResult(finish_reason="stop", content=text, cached=False,
                            usage=RequestUsage(prompt_tokens=10, completion_tokens=5))  # fmt: skip


register_backend("instant", description="benchmark: instant answers")(lambda spec, settings: InstantClient())


async def simulate(spec: str, conversations: int, turns: int, concurrency: int, db: Path) -> tuple[float, Store, str]:
    store = Store(db)
    pool = PersonaPool(store)
    pool.ensure_seeds("profile")
    pool.ensure_seeds("personality")
    config = SimulationConfig(conversations=conversations, turns=turns, concurrency=concurrency).with_backend(
        "all", spec
    )
    run_id = store.start_run("bench", {}, 0)
    trees = TreeStore(store)
    trees.create_conversations(run_id, pool.sample_pairs(conversations, seed=0), turns)
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_concurrency": 128}}), store=store, run_id=run_id)
    started = time.perf_counter()
    summary = await run_conversations(trees, backends, config, run_id)
    elapsed = time.perf_counter() - started
    await backends.aclose()
    assert summary.statuses == {"complete": conversations}, summary
    return elapsed, store, run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=100)
    args = parser.parse_args()
    n, turns = args.conversations, args.turns
    calls = n * turns * 5
    # The stub runs in its own process, as a real server would: in-process, its threads would compete
    # with the client for the interpreter lock and inflate the concurrent timing.
    command = [sys.executable, "-m", "aloekit.testing", "--latency-ms", str(args.latency_ms)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    spec = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            sequential, _, _ = asyncio.run(simulate(spec, n, turns, 1, tmp_path / "a.db"))
            concurrent, _, _ = asyncio.run(simulate(spec, n, turns, n, tmp_path / "b.db"))
            print(f"{n} conversations x {turns} turns ({calls} calls, {args.latency_ms:g} ms each)")
            print(f"concurrency 1:  {sequential:6.2f}s")
            print(f"concurrency {n}: {concurrent:6.2f}s")
            print(f"ratio: {sequential / concurrent:.1f}x (target >= 20)")

            overhead_wall, store, run_id = asyncio.run(simulate("instant:x", n, turns, 1, tmp_path / "c.db"))
            rows = store.db["llm_calls"].rows_where("run_id = ?", [run_id], select="latency_s")
            per_call = [r["latency_s"] * 1000 for r in rows]
            print(f"zero-latency backend, concurrency 1: {overhead_wall:.2f}s for {calls} calls")
            print(f"overhead per call, everything included (graph, store writes, call log): "
                  f"{1000 * overhead_wall / calls:.2f} ms mean")  # fmt: skip
            print(f"overhead per call in the client path (limits, retries, log): "
                  f"{statistics.median(per_call):.2f} ms median (target < 5 ms)")  # fmt: skip
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
