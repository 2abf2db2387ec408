"""ALOE evaluation throughput: 100 personas x 10 turns against a stub OpenAI-compatible server (its own
process) adding 100 ms per call, at concurrency 1 versus 50.

Run: ``.venv/bin/python benchmarks/bench_eval.py`` (target ratio >= 30; the concurrency-1 run alone
takes about 5 minutes: 3,000 calls of 100 ms). ``--personas 20 --turns 5`` gives a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.evaluation import EvalConfig, create_eval_conversations, run_evaluation
from aloekit.personas import read_persona_file, seed_file
from aloekit.store import Store


def eval_set_from_seeds(folder: Path) -> Path:
    """20 profiles x 5 personalities (aloekit's seeds) in the paper's file format: 100 personas."""
    for kind, name in (("profile", "profile_eval.jsonl"), ("personality", "personality_eval.jsonl")):
        texts = [p.text for p in read_persona_file(seed_file(kind), kind).personas]
        (folder / name).write_text("".join(json.dumps(t) + "\n" for t in texts))
    return folder


async def evaluate(spec: str, eval_dir: Path, personas: int, turns: int, concurrency: int, db: Path) -> float:
    store = Store(db)
    config = EvalConfig(model=spec, eval_set=str(eval_dir), personas=personas, turns=turns, concurrency=concurrency)
    config = config.with_backend("user", spec).with_backend("judge", spec)
    run_id = store.start_run("bench", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_concurrency": 256}}), store=store)
    started = time.perf_counter()
    summary = await run_evaluation(store, backends, config, run_id)
    elapsed = time.perf_counter() - started
    await backends.aclose()
    assert summary.statuses == {"complete": personas}, summary
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--personas", type=int, default=100)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    command = [sys.executable, "-m", "aloekit.testing", "--latency-ms", str(args.latency_ms)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    spec = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            eval_dir = eval_set_from_seeds(tmp_path)
            n, k = args.personas, args.turns
            concurrent = asyncio.run(evaluate(spec, eval_dir, n, k, args.concurrency, tmp_path / "b.db"))
            sequential = asyncio.run(evaluate(spec, eval_dir, n, k, 1, tmp_path / "a.db"))
    finally:
        server.terminate()
        server.wait()
    print(f"{n} personas x {k} turns ({3 * n * k} calls, {args.latency_ms:g} ms each)")
    print(f"concurrency 1:  {sequential:7.2f}s")
    print(f"concurrency {args.concurrency}: {concurrent:7.2f}s")
    print(f"ratio: {sequential / concurrent:.1f}x (target >= 30)")


if __name__ == "__main__":
    main()
