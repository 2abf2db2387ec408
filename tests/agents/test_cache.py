import pytest

from aloekit.agents.backends import BackendPool, from_dicts
from aloekit.config import AloeConfig
from aloekit.errors import BackendError
from aloekit.store import Store
from tests.helpers import ScriptedClient

HI = from_dicts([{"role": "user", "content": "hi"}])


@pytest.fixture
def setup(tmp_path, scripted):
    def make(**client_kwargs):
        client = ScriptedClient(**client_kwargs)
        spec = scripted(f"c{id(client)}", client)
        store = Store(tmp_path / "aloe.db")
        config = AloeConfig.model_validate({"backend": {"max_retries": 0}})
        return client, BackendPool(config, store=store).client(spec, role="judge"), store

    return make


async def test_repeat_is_served_from_cache(setup):
    inner, client, store = setup()
    first = await client.create(HI, extra_create_args={"temperature": 0}, cache=True)
    second = await client.create(HI, extra_create_args={"temperature": 0}, cache=True)
    assert len(inner.calls) == 1
    assert (first.cached, second.cached, second.content) == (False, True, first.content)
    assert [r["cached"] for r in store.db["llm_calls"].rows] == [0, 1]
    assert client.ledger.as_dict()["judge"]["cache_hits"] == 1


async def test_seeded_sampling_is_cacheable(setup):
    inner, client, _ = setup()
    for _ in range(2):
        await client.create(HI, extra_create_args={"temperature": 0.8, "seed": 3}, cache=True)
    assert len(inner.calls) == 1


async def test_no_hit_when_options_differ(setup):
    inner, client, _ = setup()
    await client.create(HI, extra_create_args={"temperature": 0, "max_tokens": 10}, cache=True)
    await client.create(HI, extra_create_args={"temperature": 0, "max_tokens": 11}, cache=True)
    await client.create(
        from_dicts([{"role": "user", "content": "hello"}]), extra_create_args={"temperature": 0}, cache=True
    )
    assert len(inner.calls) == 3


async def test_failures_are_never_cached(setup):
    inner, client, store = setup(failures=[ValueError("boom")])
    with pytest.raises(BackendError):
        await client.create(HI, extra_create_args={"temperature": 0}, cache=True)
    result = await client.create(HI, extra_create_args={"temperature": 0}, cache=True)
    assert len(inner.calls) == 2 and not result.cached
    assert [r["status"] for r in store.db["llm_calls"].rows] == ["error", "ok"]


async def test_no_cache_unless_asked_or_when_sampling_unseeded(setup):
    inner, client, _ = setup()
    await client.create(HI, extra_create_args={"temperature": 0})
    await client.create(HI, extra_create_args={"temperature": 0})  # not asked
    await client.create(HI, extra_create_args={"temperature": 0.7}, cache=True)
    await client.create(HI, extra_create_args={"temperature": 0.7}, cache=True)  # not deterministic
    assert len(inner.calls) == 4


async def test_generation_options_pass_through(setup):
    inner, client, _ = setup()
    await client.create(
        HI,
        extra_create_args={
            "temperature": 0.2,
            "max_tokens": 7,
            "seed": 1,
            "stop": ["\n"],
            "response_format": {"type": "text"},
        },
    )
    assert inner.calls[0][1] == {
        "temperature": 0.2,
        "max_tokens": 7,
        "seed": 1,
        "stop": ["\n"],
        "response_format": {"type": "text"},
    }


async def test_an_in_process_model_computing_differently_is_not_served_the_stored_answer(tmp_path, tiny_model_dir):
    store, spec = Store(tmp_path / "aloe.db"), f"hf:{tiny_model_dir}"

    async def answer(**backend) -> bool:
        pool = BackendPool(AloeConfig.model_validate({"backend": backend}), store=store)
        result = await pool.client(spec).create(HI, extra_create_args={"temperature": 0, "max_tokens": 3}, cache=True)
        await pool.aclose()
        return result.cached

    assert not await answer(dtype="float32")
    assert not await answer(dtype="bfloat16")  # other numerics: made again
    assert await answer(dtype="float32") and await answer(dtype="bfloat16")
    # What the settings resolve to counts: a transformers folder decodes in float whether asked or not.
    assert await answer(dtype="float32", weights="float")
    # What resolved, not what was asked: a server has none of its own to report (its keys stay as they were).
    pool = BackendPool(AloeConfig.model_validate({"backend": {"dtype": "bfloat16", "weights": "packed"}}))
    assert pool.client(spec).compute_settings() == {"engine": "static", "dtype": "bfloat16", "weights": "float"}
    assert pool.client("openai:http://127.0.0.1:9/v1#m").compute_settings() == {}
