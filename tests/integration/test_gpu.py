"""The embedded SmolLM2 on a CUDA device: the continuous engine (answers, seeds, stop strings, guided choice,
64 chats at once) and training with the CUDA defaults. Skipped without CUDA (CI has none); run by
benchmarks/gpu_check.sh on a GPU machine. Where the installed transformers has no continuous batching
(before 5.19), the same checks run the static engine on CUDA, its fallback there."""

import asyncio
import json

import pytest

from aloekit.agents.backends import BackendPool, from_dicts
from aloekit.agents.backends.continuous import continuous_batching_available
from aloekit.config import AloeConfig
from aloekit.training import build_train_config, train
from benchmarks.bench_train import make_rows

pytestmark = [pytest.mark.integration, pytest.mark.gpu]

ENGINE = "continuous" if continuous_batching_available() is None else "static"
"""The engine CUDA gets from the installed transformers."""
TOPICS = ["running", "coffee", "houseplants", "chess", "hiking", "baking bread", "jazz", "sailing"]


def _chat(text):
    return from_dicts([{"role": "user", "content": text}])


@pytest.fixture
def pool():
    # One pool per test (a semaphore that had to wait is bound to its test's event loop); closed after it,
    # which frees the engine's KV cache for the tests that follow. 64 in flight, so the 64 chats run at once.
    pool = BackendPool(AloeConfig(backend={"max_concurrency": 64}))
    yield pool
    asyncio.run(pool.aclose())


async def test_the_engine_on_cuda_answers(pool):
    client = pool.client("local:smollm2", role="chat")
    question = _chat("What is the capital of France? Answer in one sentence.")
    result = await client.create(question, extra_create_args={"max_tokens": 24, "temperature": 0})
    inner = pool.inner("local:smollm2")
    assert inner.engine == ENGINE and inner.device.startswith("cuda")
    assert "paris" in result.content.lower()
    chats = [_chat(f"Give me a tip about {TOPICS[i % 8]} (number {i}).") for i in range(64)]
    results = await asyncio.gather(*(client.create(c, extra_create_args={"max_tokens": 32}) for c in chats))
    assert all(r.content.strip() and 0 < r.usage.completion_tokens <= 32 for r in results)
    if ENGINE == "continuous":
        assert inner.batch_sizes == []  # nothing fell back to static batches


async def test_seeds_stop_strings_and_guided_choice_on_cuda(pool):
    client = pool.client("local:smollm2", role="chat")
    options = {"temperature": 0.9, "max_tokens": 12, "seed": 7}
    alone = await client.create(_chat("Tell me about the sea."), extra_create_args=options)
    crowd = [client.create(_chat(f"Tell me about {t}."), extra_create_args={**options, "seed": i})
             for i, t in enumerate(TOPICS)]  # fmt: skip
    again, *_ = await asyncio.gather(client.create(_chat("Tell me about the sea."), extra_create_args=options), *crowd)
    assert again.content == alone.content  # the seed, not the neighbours, decides the draw
    counted = await client.create(_chat("Count from one to ten in words."), extra_create_args={"max_tokens": 40})
    words = counted.content.split()
    assert len(words) > 3, counted.content
    stopped = await client.create(_chat("Count from one to ten in words."),
                                  extra_create_args={"max_tokens": 40, "stop": [words[3]]})  # fmt: skip
    assert stopped.finish_reason == "stop" and words[3] not in stopped.content
    choice = {"guided_choice": ["A", "B"], "logprobs": True, "max_tokens": 1}
    picked = await client.create(_chat("Answer A or B: is Paris in France? A yes, B no."), extra_create_args=choice)
    assert picked.content in {"A", "B"} and len(picked.logprobs[0].top_logprobs) == 2


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_training_with_the_cuda_defaults(tmp_path, method):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(64, method)))
    summary = train(build_train_config(method, data=data, base="local:smollm2", out=tmp_path / "a", max_steps=2))
    assert summary["steps"] == 2 and summary["device"] != "cpu" and summary["gradient_checkpointing"] is True
    assert 1 <= summary["batch_size"] <= 32 and summary["tokens_per_s"] > 0
