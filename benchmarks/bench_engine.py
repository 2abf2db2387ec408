"""Tokens/s of ``local:smollm2`` at 1/8/32/64 concurrent chats on whatever device is present: aloekit's
in-process backend (static batching, ``max_batch_size`` = the concurrency) next to transformers' own
continuous batching (``generate_batch`` with paged attention) on the same prompts, greedy, and, with
``--llamacpp URL``, a llama.cpp server's single stream on the same GGUF.

Run: ``.venv/bin/python benchmarks/bench_engine.py`` (``--concurrency 1,8`` for a quick look).
Targets (issue 15): on 2 CPU cores, single stream >= 23 tokens/s, 8 concurrent >= 80 tokens/s and >= 1.5x
llama.cpp's single stream; on a GPU, 64 concurrent >= 20x the single stream.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aloekit.agents.backends import BackendPool, from_dicts
from aloekit.config import AloeConfig

TOPICS = ["running", "coffee", "houseplants", "chess", "hiking", "baking bread", "jazz", "sailing"]


def chats(n: int) -> list[list[dict[str, str]]]:
    """``n`` different one-message chats."""
    return [[{"role": "user", "content": f"Give me a tip about {TOPICS[i % 8]} (number {i})."}] for i in range(n)]


async def aloekit_rate(spec: str, n: int, max_tokens: int) -> float:
    """Tokens/s of ``n`` concurrent chats through aloekit's backend for ``spec``."""
    pool = BackendPool(AloeConfig.model_validate({"backend": {"max_batch_size": n, "max_concurrency": n}}))
    client = pool.client(spec, role="bench")
    if spec.startswith("local:"):
        await asyncio.to_thread(pool.inner(spec).load)
    await client.create(from_dicts(chats(1)[0]), extra_create_args={"max_tokens": 4, "temperature": 0})  # warm-up
    started = time.perf_counter()
    options = {"max_tokens": max_tokens, "temperature": 0}
    results = await asyncio.gather(*(client.create(from_dicts(c), extra_create_args=options) for c in chats(n)))
    return sum(r.usage.completion_tokens for r in results) / (time.perf_counter() - started)


def continuous_rate(model: Any, tokenizer: Any, n: int, max_tokens: int) -> float:
    """Tokens/s of ``n`` chats through transformers' ``generate_batch`` (continuous batching)."""
    from transformers.generation import GenerationConfig

    inputs = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True) for c in chats(n)]
    inputs = [list(i["input_ids"]) if hasattr(i, "keys") else list(i) for i in inputs]
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    # A backend keeps one manager running; its start (and CUDA graph capture) is not what is measured here.
    model.generate_batch(inputs=inputs, generation_config=config, persistent_manager=True)
    started = time.perf_counter()
    outputs = model.generate_batch(inputs=inputs, generation_config=config, persistent_manager=True)
    rate = sum(len(o.generated_tokens) for o in outputs.values()) / (time.perf_counter() - started)
    model.destroy_cached_continuous_batching_manager()  # the next concurrency gets a manager sized for it
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated numbers of concurrent chats")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--attention", default="paged|sdpa", help="transformers' paged attention for generate_batch")
    parser.add_argument("--no-continuous", action="store_true", help="measure aloekit's backend only")
    parser.add_argument("--llamacpp", metavar="URL", help="a llama.cpp server (OpenAI API) serving the same GGUF")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = {n: [asyncio.run(aloekit_rate("local:smollm2", n, args.max_tokens))] for n in levels}
    if not args.no_continuous:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from aloekit.agents.backends.local import converted_model_dir, find_smollm2_gguf

        folder = converted_model_dir(find_smollm2_gguf())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=args.attention, dtype=dtype)
        model.to(device)
        for n in levels:
            rows[n].append(continuous_rate(model, tokenizer, n, args.max_tokens))
    print(f"local:smollm2 on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"{args.max_tokens} tokens per chat, greedy; tokens/s")  # fmt: skip
    header = "concurrent | aloekit backend" + ("" if args.no_continuous else f" | generate_batch ({args.attention})")
    print(header)
    for n, rates in rows.items():
        print(f"{n:>10} | " + " | ".join(f"{r:>15.1f}" for r in rates))
    single = rows[levels[0]][0] if levels[0] == 1 else None
    if single:
        for n in levels[1:]:
            print(f"aloekit backend, {n} concurrent / single stream: {rows[n][0] / single:.2f}x")
    if args.llamacpp:
        llama = asyncio.run(aloekit_rate(f"openai:{args.llamacpp}#smollm2", 1, args.max_tokens))
        print(f"llama.cpp single stream: {llama:.1f} tokens/s")
        if 8 in rows:
            print(f"aloekit backend, 8 concurrent / llama.cpp single stream: {rows[8][0] / llama:.2f}x (target >= 1.5)")


if __name__ == "__main__":
    main()
