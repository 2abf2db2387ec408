"""Tokens/s of ``local:smollm2`` at 1/8/32/64 concurrent chats on whatever device is present, through
aloekit's in-process backend with each engine: ``static`` batches (``max_batch_size`` = the concurrency)
and ``continuous`` batching (transformers' manager inside the backend); ``--raw`` adds transformers' own
``generate_batch`` on the same prompts, greedy; ``--llamacpp URL`` a llama.cpp server's single stream on
the same GGUF. A single stream (concurrency 1) answers 8 chats one after another. ``--dtype bfloat16``
loads the model so instead of the device's default; ``--weights float,packed`` measures each engine
decoding with the converted float weights and with the GGUF's blocks; ``--round-tokens 8,0`` the static
engine with finished rows leaving its batch every 8 tokens and (0) with one ``generate`` call per batch,
which keeps every row to the end; ``--kv-cache growing,dynamic`` it with aloekit's KV cache that appends in
place and with transformers' ``DynamicCache``, which copies itself every step; ``--decode-step
plain,transformers`` it with aloekit's plain decoding step and with transformers' modules; ``--kernels "int8
dot,torch"`` its packed layers through the compiled int8 dot kernel and through torch's (int4 for Q4_1, and for
the Q8_0 output layer the AMX tiles where aloekit would take them, else int8), swapped on the loaded model
(default ``auto``: as aloekit chose, nothing swapped). ``--preamble-words 450
--temperature 0.7 --max-tokens 256`` makes the chats look like a simulation's: long prompts, sampled
(seeded) replies of varied length.

Run: ``.venv/bin/python benchmarks/bench_engine.py`` (``--concurrency 1,8`` for a quick look; ``--repeats 3``
for medians where the machine's load varies).
Targets (issue 15): on 2 CPU cores, single stream >= 23 tokens/s, 8 concurrent >= 80 tokens/s and >= 1.5x
llama.cpp's single stream; on a GPU, 64 concurrent >= 20x the single stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Sequence
from itertools import product
from typing import Any

from aloekit.agents.backends import BackendPool, from_dicts, local
from aloekit.agents.backends.decode_step import plain_decoding_steps
from aloekit.agents.backends.int8_dot import int8_dot_missing
from aloekit.agents.backends.kvcache import growing_cache
from aloekit.agents.backends.local import bfloat16_tiles_wanted, resolve_dtype
from aloekit.agents.backends.packed import cached_gguf_blocks
from aloekit.config import AloeConfig
from aloekit.cpu_thread import call_on_cpu_thread

TOPICS = ["running", "coffee", "houseplants", "chess", "hiking", "baking bread", "jazz", "sailing"]


SINGLE_STREAM_CHATS = 8
"""A single stream answers this many chats one after another: one chat's reply may end after a few tokens,
and so measure mostly its prompt and the request (llama.cpp ended the first chat after 7 tokens, aloekit
after 55)."""

PREAMBLE = "You are a helpful assistant who answers in a friendly, practical tone. "


def chats(n: int, preamble_words: int = 0) -> list[list[dict[str, str]]]:
    """``n`` different one-message chats, each after about ``preamble_words`` words of system prompt."""
    preamble = PREAMBLE * -(-preamble_words // len(PREAMBLE.split()))
    system = [{"role": "system", "content": preamble.strip()}] if preamble_words else []
    return [system + [{"role": "user", "content": f"Give me a tip about {TOPICS[i % 8]} (number {i})."}]
            for i in range(n)]  # fmt: skip


async def aloekit_rates(
    spec: str,
    levels: list[int],
    max_tokens: int,
    engine: str = "auto",
    dtype: str = "auto",
    weights: str = "auto",
    variants: Sequence[tuple[int, str, str, str]] = ((local.ROUND_TOKENS, "growing", "plain", "auto"),),
    repeats: int = 1,
    temperature: float = 0.0,
    preamble_words: int = 0,
) -> tuple[list[list[float]], dict[str, str]]:
    """Tokens/s of ``n`` concurrent chats through aloekit's backend for ``spec``, for each of the static engine's
    ``variants`` (tokens per ``generate`` call, 0: one call per batch; the KV cache, ``growing`` or
    ``dynamic``; the decoding step, ``plain`` or ``transformers``; the packed layers' kernels, ``int8 dot``,
    ``torch`` or ``auto``, as loaded) and each ``n`` in ``levels``: the median
    of ``repeats``, the variants taking turns on one loaded model in alternating order, so the machine's
    changing load falls on them alike (a warm-up at the highest concurrency first: the first load and
    warm-up are not timed); and the engine, dtype and weights the model ran with (where asked ones fell
    back, not those asked). Chat ``i`` samples at ``temperature`` with seed ``i`` (0: greedy)."""
    top = max(levels)
    settings = {"max_batch_size": top, "max_concurrency": top, "engine": engine, "dtype": dtype, "weights": weights}
    pool = BackendPool(AloeConfig.model_validate({"backend": settings}))
    client = pool.client(spec, role="bench")

    async def rate(n: int, tokens: int) -> float:
        count = n if n > 1 else SINGLE_STREAM_CHATS
        requests = [
            (from_dicts(chat), {"max_tokens": tokens, "temperature": temperature, "seed": i})
            for i, chat in enumerate(chats(count, preamble_words))
        ]
        started = time.perf_counter()
        if n > 1:
            results = await asyncio.gather(*(client.create(c, extra_create_args=o) for c, o in requests))
        else:
            results = [await client.create(c, extra_create_args=o) for c, o in requests]
        return sum(r.usage.completion_tokens for r in results) / (time.perf_counter() - started)

    await rate(top, 8)  # loads the model and warms up
    # built on the CPU thread: a torch call on another thread would give OpenMP a second team (aloekit.cpu_thread)
    kernels = call_on_cpu_thread(packed_kernels, pool.inner(spec)) if any(v[3] != "auto" for v in variants) else {}
    taken: dict[tuple[tuple[int, str, str], int], list[float]] = {}
    for n in levels:
        for repeat in range(repeats):
            for variant in variants if repeat % 2 == 0 else variants[::-1]:  # the first of a turn measured faster
                tokens, cache, step, kernel = variant
                for owner, field, value in kernels.get(kernel, []):
                    setattr(owner, field, value)
                local.ROUND_TOKENS = tokens or 10**9
                local.growing_cache = growing_cache if cache == "growing" else dynamic_cache
                local.plain_decoding_steps = plain_decoding_steps if step == "plain" else transformers_steps
                taken.setdefault((variant, n), []).append(await rate(n, max_tokens))
    rates = [[statistics.median(taken[variant, n]) for n in levels] for variant in variants]
    compute = client.compute_settings()
    await pool.aclose()
    return rates, compute


def packed_kernels(client: Any) -> dict[str, list[tuple[Any, str, Any]]]:
    """For each kind of kernel (``torch``; ``int8 dot`` where this process has it), the attributes to set on
    ``client``'s loaded model so that each packed layer multiplies through it (``packed_matmul``, chosen as a load
    chooses it: :func:`~aloekit.agents.backends.packed.layer_matmul`), from the blocks cached beside the model,
    with the joined q/k/v and gate/up products the plain step keeps (``_joined_matmul``: made here once, not again
    at each switch)."""
    from aloekit.agents.backends.packed import joined_product, layer_matmul

    model, blocks = client.model, cached_gguf_blocks(client.model, client.gguf, client._path)
    tiles = bfloat16_tiles_wanted(client.compute_settings()["dtype"])
    kinds = ["torch"] + (["int8 dot"] if int8_dot_missing() is None else [])
    kernels: dict[str, list[tuple[Any, str, Any]]] = {}
    for kind in kinds:
        chosen = {module: layer_matmul(name, module, blocks, tiles, int8_dot=kind == "int8 dot")
                  for name, module in model.named_modules() if hasattr(module, "packed_matmul")}  # fmt: skip
        kernels[kind] = [(module, "packed_matmul", matmul) for module, matmul in chosen.items()]
        for layer in model.model.layers:
            for owner, parts in (
                (layer.self_attn, ("q_proj", "k_proj", "v_proj")),
                (layer.mlp, ("gate_proj", "up_proj")),
            ):
                joined = [chosen[getattr(owner, part)] for part in parts]
                kernels[kind].append((owner, "_joined_matmul", (joined, joined_product(joined))))
    return kernels


def dynamic_cache(config: Any, room: int) -> Any:
    """transformers' own ``DynamicCache``, which appends by concatenation."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


def transformers_steps(model: Any) -> contextlib.AbstractContextManager[bool]:
    """Decoding steps through transformers' modules: no plain step."""
    return contextlib.nullcontext(False)


def continuous_rate(model: Any, tokenizer: Any, n: int, max_tokens: int) -> float:
    """Tokens/s of ``n`` chats through transformers' ``generate_batch`` (continuous batching)."""
    from transformers.generation import GenerationConfig

    prompts = chats(n if n > 1 else SINGLE_STREAM_CHATS)
    inputs = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True) for c in prompts]
    inputs = [list(i["input_ids"]) if hasattr(i, "keys") else list(i) for i in inputs]
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    # A backend keeps one manager running; its start (and CUDA graph capture) is not what is measured here.
    model.generate_batch(inputs=inputs, generation_config=config, persistent_manager=True)
    started = time.perf_counter()
    batches = [inputs] if n > 1 else [[i] for i in inputs]  # a single stream: one chat after another
    outputs = [o for b in batches for o in model.generate_batch(b, config, persistent_manager=True).values()]
    rate = sum(len(o.generated_tokens) for o in outputs) / (time.perf_counter() - started)
    model.destroy_cached_continuous_batching_manager()  # the next concurrency gets a manager sized for it
    return rate


def column_label(
    engine: str, weights: str, ran: dict[str, str], round_tokens: int | None = None, kv_cache: str | None = None,
    decode_step: str | None = None, kernels: str | None = None,
) -> str:  # fmt: skip
    """The engine (and weights, where asked) the model ran with, ``(asked X)`` after one that fell back, and
    the static engine's rounds, KV cache, decoding step and packed layers' kernels where several were asked."""

    def shown(asked: str, key: str) -> str:
        got = ran.get(key, asked)
        return got if asked in ("auto", got) else f"{got} (asked {asked})"

    label = shown(engine, "engine") + (f", {shown(weights, 'weights')}" if weights != "auto" else "")
    if round_tokens is not None and ran.get("engine") == "static":
        label += f", rounds of {round_tokens}" if round_tokens else ", one call"
    if kv_cache is not None and ran.get("engine") == "static":
        label += f", {kv_cache} cache"
    if decode_step is not None and ran.get("engine") == "static":
        label += f", {decode_step} steps"
    if kernels is not None and ran.get("weights") == "packed":  # auto: the Q4_1 kernel aloekit chose
        label += f", {ran.get('q4_1_matmul', '?') if kernels == 'auto' else kernels} kernels"
    return label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated numbers of concurrent chats")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else sampled, seed i for chat i")
    parser.add_argument("--preamble-words", type=int, default=0, help="words of system prompt before each chat")
    parser.add_argument("--engines", default="static,continuous", help="aloekit engines to measure")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="what the model loads as (auto: the device's default)")  # fmt: skip
    parser.add_argument("--weights", default="auto", help="comma-separated: auto, packed, float")
    parser.add_argument("--raw", action="store_true", help="also transformers' generate_batch, outside aloekit")
    parser.add_argument("--attention", default="sdpa", help="the attention implementation for --raw")
    parser.add_argument("--llamacpp", metavar="URL", help="a llama.cpp server (OpenAI API) serving the same GGUF")
    parser.add_argument("--round-tokens", default=str(local.ROUND_TOKENS),
                        help="comma-separated tokens per generate call, static engine (0: one per batch)")  # fmt: skip
    parser.add_argument("--kv-cache", default="growing", help="comma-separated: growing, dynamic (static engine)")
    parser.add_argument("--decode-step", default="plain",
                        help="comma-separated: plain, transformers (static engine)")  # fmt: skip
    parser.add_argument("--kernels", default="auto",
                        help="comma-separated: auto, int8 dot, torch (packed weights' kernels)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="measurements per figure (the median is shown)")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rounds = [int(r) for r in args.round_tokens.split(",")]

    def listed(flag: str, value: str, allowed: tuple[str, ...]) -> list[str]:
        if unknown := set(chosen := value.split(",")) - set(allowed):
            parser.error(f"{flag}: unknown {', '.join(sorted(unknown))} (use {', '.join(allowed)})")
        return chosen

    caches = listed("--kv-cache", args.kv_cache, ("growing", "dynamic"))
    steps = listed("--decode-step", args.decode_step, ("plain", "transformers"))
    kernels = listed("--kernels", args.kernels, ("auto", "int8 dot", "torch"))
    if "int8 dot" in kernels and (missing := int8_dot_missing()):
        parser.error(f"--kernels: no int8 dot kernel here: {missing}")
    static_variants = list(product(rounds, caches, steps, kernels))
    workload = {"temperature": args.temperature, "preamble_words": args.preamble_words}
    columns: list[tuple[str, str, tuple[int, str, str, str]]] = []
    measured: list[tuple[list[float], dict[str, str]]] = []
    for engine in args.engines.split(","):
        for weights in args.weights.split(","):
            asked = static_variants if engine == "static" else static_variants[:1]
            rates, compute = asyncio.run(aloekit_rates("local:smollm2", levels, args.max_tokens, engine, args.dtype,
                                                       weights, asked, args.repeats, **workload))  # fmt: skip
            columns += [(engine, weights, r) for r in asked]
            measured += [(r, compute) for r in rates]
    rows = {n: [rates[i] for rates, _ in measured] for i, n in enumerate(levels)}
    if args.raw:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from aloekit.agents.backends.local import converted_model_dir, find_smollm2_gguf

        folder = converted_model_dir(find_smollm2_gguf())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = getattr(torch, resolve_dtype(args.dtype, device))
        # on the CPU thread, as aloekit's engines (aloekit.cpu_thread)
        load = AutoModelForCausalLM.from_pretrained
        model = call_on_cpu_thread(load, folder, attn_implementation=args.attention, dtype=dtype).to(device)
        for n in levels:
            rows[n].append(call_on_cpu_thread(continuous_rate, model, tokenizer, n, args.max_tokens))
    print(f"local:smollm2 on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"{resolve_dtype(args.dtype, device)}, {args.max_tokens} tokens per chat, "
          f"{f'temperature {args.temperature}' if args.temperature else 'greedy'}"
          f"{f', {args.preamble_words}-word preamble' if args.preamble_words else ''}; tokens/s")  # fmt: skip
    # Columns say what the model ran with: an engine or weights that fell back (continuous batching needs
    # transformers >= 5.19, packed weights a CPU) must not pass for the one asked.
    labels = [column_label(e, w, compute, r if len(rounds) > 1 else None, c if len(caches) > 1 else None,
                           s if len(steps) > 1 else None, k if len(kernels) > 1 else None)
              for (e, w, (r, c, s, k)), (_, compute) in zip(columns, measured, strict=True)]  # fmt: skip
    headers = [f"aloekit {c}" for c in labels] + ([f"generate_batch ({args.attention})"] if args.raw else [])
    widths = [max(22, len(h)) for h in headers]
    print("concurrent | " + " | ".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True)))
    for n, rates in rows.items():
        print(f"{n:>10} | " + " | ".join(f"{r:>{w}.1f}" for r, w in zip(rates, widths, strict=True)))
    if levels[0] == 1:
        for i, label in enumerate(labels):
            single = rows[1][i]
            for n in levels[1:]:
                print(f"aloekit {label}, {n} concurrent / single stream: {rows[n][i] / single:.2f}x")
    for i, label in enumerate(labels[1:], start=1):
        for n in levels:
            print(f"{n} concurrent, {label} / {labels[0]}: {rows[n][i] / rows[n][0]:.2f}x")
    if args.llamacpp:
        server = f"openai:{args.llamacpp}#smollm2"
        llama = asyncio.run(aloekit_rates(server, [1], args.max_tokens, repeats=args.repeats, **workload))[0][0][0]
        print(f"llama.cpp single stream: {llama:.1f} tokens/s")
        if 8 in rows:
            best = max(rows[8][: len(columns)])
            print(f"aloekit, 8 concurrent / llama.cpp single stream: {best / llama:.2f}x (target >= 1.5)")


if __name__ == "__main__":
    main()
