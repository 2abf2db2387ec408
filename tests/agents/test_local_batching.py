import asyncio

import pytest

from aloekit.agents.backends import BackendPool, TransformersChatClient, from_dicts, local
from aloekit.config import AloeConfig
from aloekit.errors import BackendError
from tests.helpers import build_tiny_chat_model

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


def _record_generate_rows(client):
    """Wrap the loaded model's ``generate`` to record each call's batch rows."""
    rows, generate = [], client.model.generate

    def recording(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    client.model.generate = recording
    return rows


async def test_finished_rows_leave_the_batch_between_rounds(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(local, "ROUND_TOKENS", 2)
    client = TransformersChatClient(tiny_model_dir)
    client.load()
    rows = _record_generate_rows(client)
    max_tokens = [3, 12, 7, 20]
    results = await asyncio.gather(
        *(
            client.create(_msgs(p), extra_create_args={"temperature": 0, "max_tokens": n})
            for p, n in zip(PROMPTS, max_tokens, strict=True)
        )
    )
    assert [r.usage.completion_tokens for r in results] == max_tokens  # the random model never ends a reply itself
    assert client.batch_sizes == [4]
    # Two tokens per call: the 3-token reply leaves after the second call, the 7-token one after the fourth,
    # the 12-token one after the sixth; the 20-token one, alone, makes its last 8 tokens in one call.
    assert rows == [4, 4, 3, 3, 2, 2, 1]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "top_p": 0.8}], ids=["greedy", "seeded"])
async def test_replies_are_the_same_in_rounds_as_in_one_call(tmp_path, monkeypatch, sampling):
    model_dir = build_tiny_chat_model(tmp_path, extra_words=("abcdef",))  # stop strings need it

    async def replies(round_tokens, stop=()):
        monkeypatch.setattr(local, "ROUND_TOKENS", round_tokens)
        client = TransformersChatClient(model_dir)
        options = [{**sampling, "max_tokens": n, "seed": i, "stop": list(stop)} for i, n in enumerate([3, 12, 7, 20])]
        results = await asyncio.gather(
            *(client.create(_msgs(p), extra_create_args=o) for p, o in zip(PROMPTS, options, strict=True))
        )
        return [(r.content, r.finish_reason, r.usage.completion_tokens) for r in results]

    whole = await replies(10**6)
    assert await replies(2) == whole
    # A stop string met in one round ends its row there; the text is cut at it as in one call. (A sampled
    # reply may end by itself: the stop string is the third word of the longest.)
    row = max(range(len(whole)), key=lambda i: len(whole[i][0].split()))
    stop = whole[row][0].split()[2]
    in_rounds = await replies(2, stop=[stop])
    assert in_rounds == await replies(10**6, stop=[stop])
    assert in_rounds[row][1] == "stop" and stop not in in_rounds[row][0]


async def test_a_model_asking_for_its_own_cache_decodes_in_one_call(tiny_model_dir):
    # Gemma's generation config asks for a hybrid cache; generate refuses a cache passed beside that request.
    client = TransformersChatClient(tiny_model_dir)
    client.load()
    client.model.generation_config.cache_implementation = "static"
    rows = _record_generate_rows(client)
    results = await asyncio.gather(
        *(
            client.create(_msgs(p), extra_create_args={"temperature": 0, "max_tokens": n})
            for p, n in zip(PROMPTS[:2], [3, 12], strict=True)
        )
    )
    assert [r.usage.completion_tokens for r in results] == [3, 12]
    assert rows == [2]
