"""The real embedded SmolLM2 (no network): loaded once, chatted with, and batched."""

import asyncio

import pytest

from aloekit.agents.backends import BackendPool, from_dicts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool():
    return BackendPool()


async def test_smollm2_answers_coherently(pool):
    client = pool.client("local:smollm2", role="chat")
    messages = from_dicts([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
    result = await client.create(messages, extra_create_args={"max_tokens": 24, "temperature": 0})
    assert "paris" in result.content.lower()
    assert result.usage.prompt_tokens > 10 and 0 < result.usage.completion_tokens <= 24


async def test_smollm2_batches_concurrent_chats(pool):
    client = pool.client("local:smollm2", role="chat")
    questions = ["Name a color.", "Name a fruit.", "Name an animal."]
    options = {"max_tokens": 8, "temperature": 0}
    chats = [from_dicts([{"role": "user", "content": q}]) for q in questions]
    results = await asyncio.gather(*(client.create(c, extra_create_args=options) for c in chats))
    assert all(r.content.strip() for r in results)
    inner = pool.inner("local:smollm2")
    if inner.engine == "static":  # on CPU: the three shared one generate() call
        assert 3 in inner.batch_sizes
    else:  # on CUDA they ran in the continuous engine, never in a static batch
        assert inner.engine == "continuous" and inner.batch_sizes == []


def test_cli_check_local_smollm2(run_aloe):
    proc = run_aloe("backends", "check", "local:smollm2", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "paris" in proc.stdout.lower() and "latency:" in proc.stdout
