import asyncio

import pytest

from aloekit.agents.backends import BackendPool, TransformersChatClient, from_dicts
from aloekit.config import AloeConfig
from aloekit.errors import BackendError

PROMPTS = ["hello", "what is the capital of france", "the cat likes tea", "say one two three"]


def _msgs(text):
    return from_dicts([{"role": "user", "content": text}])


async def test_concurrent_requests_share_one_generate_call(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir, max_batch_size=8)
    options = {"temperature": 0, "max_tokens": 6}
    batched = await asyncio.gather(*(client.create(_msgs(p), extra_create_args=options) for p in PROMPTS))
    assert client.batch_sizes == [4]
    sequential = [await client.create(_msgs(p), extra_create_args=options) for p in PROMPTS]
    assert client.batch_sizes == [4, 1, 1, 1, 1]
    # Left padding with an attention mask gives each row the same greedy answer as running it alone.
    assert [r.content for r in batched] == [r.content for r in sequential]
    assert all(r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0 for r in batched)


async def test_batches_respect_max_size_and_sampling_options(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir, max_batch_size=3)
    greedy = [client.create(_msgs(p), extra_create_args={"max_tokens": 3}) for p in PROMPTS]
    sampled = [client.create(_msgs("hi"), extra_create_args={"max_tokens": 3, "temperature": 0.9, "seed": 1})]
    await asyncio.gather(*greedy, *sampled)
    assert sorted(client.batch_sizes) == [1, 1, 3]


async def test_per_request_max_tokens_in_one_batch(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    short, long = await asyncio.gather(
        client.create(_msgs("hello"), extra_create_args={"max_tokens": 2}),
        client.create(_msgs("hello"), extra_create_args={"max_tokens": 12}),
    )
    assert client.batch_sizes == [2]
    assert short.usage.completion_tokens <= 2
    if long.usage.completion_tokens > 2:  # the random model did not stop early
        assert short.finish_reason == "length"
        assert long.content.startswith(short.content)


async def test_managed_pool_shares_one_model_between_roles(tiny_model_dir):
    pool = BackendPool(AloeConfig())
    spec = f"hf:{tiny_model_dir}"
    user, judge = pool.client(spec, role="user"), pool.client(spec, role="judge")
    await asyncio.gather(
        user.create(_msgs("hello"), extra_create_args={"max_tokens": 3}),
        judge.create(_msgs("hi"), extra_create_args={"max_tokens": 3}),
    )
    assert pool.inner(spec).batch_sizes == [2]
    assert set(pool.ledger.as_dict()) == {"user", "judge"}


async def test_token_counting_and_protocol(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    n = client.count_tokens(_msgs("hello hello"))
    assert n > 2 and client.remaining_tokens(_msgs("hello hello")) == 512 - n
    chunks = [c async for c in client.create_stream(_msgs("hi"), extra_create_args={"max_tokens": 2})]
    assert isinstance(chunks[0], str) and chunks[-1].content == chunks[0]
    assert client.total_usage().prompt_tokens > 0 and client.total_usage() == client.actual_usage()


async def test_tools_are_refused(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    with pytest.raises(BackendError, match="tool calls are not supported"):
        await client.create(_msgs("hi"), tools=[{"name": "f"}])


async def test_load_failure_reaches_every_waiting_request(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    client = TransformersChatClient(tmp_path)
    results = await asyncio.gather(client.create(_msgs("a")), client.create(_msgs("b")), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)


async def test_guided_choice_answers_one_of_the_options(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    options = {"guided_choice": ["1", "2", "3", "4", "5"], "max_tokens": 1}
    results = await asyncio.gather(*(client.create(_msgs(p), extra_create_args=options) for p in PROMPTS))
    assert client.batch_sizes == [4]
    assert all(r.content in {"1", "2", "3", "4", "5"} and r.usage.completion_tokens == 1 for r in results)
