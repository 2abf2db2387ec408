"""Tokens/s of 8 concurrent chats through ``local:smollm2`` (batched) versus the same 8 one at a time.

Run: ``.venv/bin/python benchmarks/bench_local_batching.py`` (target ratio >= 2.5 on 2 cores).
``--temperature 0.7`` samples instead (each request with its own seed, as simulations do).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aloekit.agents.backends import BackendPool, from_dicts

QUESTIONS = [
    "Describe your ideal weekend in two sentences.",
    "What is a good way to start running?",
    "Give me a tip for brewing better coffee at home.",
    "How do I keep houseplants alive?",
    "What should I pack for a day hike?",
    "Suggest a simple dinner for two.",
    "How can I get better at chess?",
    "What is a fun hobby to pick up this winter?",
]


async def bench(max_tokens: int, temperature: float) -> None:
    pool = BackendPool()
    client = pool.client("local:smollm2", role="bench")
    await asyncio.to_thread(pool.inner("local:smollm2").load)
    chats = [from_dicts([{"role": "user", "content": q}]) for q in QUESTIONS]
    await client.create(chats[0], extra_create_args={"max_tokens": 4})  # warm-up

    started = time.perf_counter()

    def options(i: int) -> dict:
        return {"max_tokens": max_tokens, "temperature": temperature, **({"seed": i} if temperature else {})}

    sequential = [await client.create(c, extra_create_args=options(i)) for i, c in enumerate(chats)]
    seq_s = time.perf_counter() - started
    started = time.perf_counter()
    concurrent = await asyncio.gather(*(client.create(c, extra_create_args=options(i)) for i, c in enumerate(chats)))
    conc_s = time.perf_counter() - started

    seq_tokens = sum(r.usage.completion_tokens for r in sequential)
    conc_tokens = sum(r.usage.completion_tokens for r in concurrent)
    seq_rate, conc_rate = seq_tokens / seq_s, conc_tokens / conc_s
    print(f"sequential: {seq_tokens} tokens in {seq_s:.1f}s = {seq_rate:.1f} tokens/s")
    print(
        f"concurrent: {conc_tokens} tokens in {conc_s:.1f}s = {conc_rate:.1f} tokens/s "
        f"(generate batch sizes {pool.inner('local:smollm2').batch_sizes[-3:]})"
    )
    print(f"ratio: {conc_rate / seq_rate:.2f}x (target >= 2.5)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(bench(args.max_tokens, args.temperature))
