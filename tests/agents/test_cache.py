import os
import shutil

import pytest

from aloekit.agents.backends import BackendPool, from_dicts
from aloekit.agents.backends.messages import to_dicts
from aloekit.config import AloeConfig
from aloekit.errors import BackendError
from aloekit.store import Store, cache_key
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


async def test_an_answer_is_stored_under_the_settings_its_model_loaded_with(setup):
    """A model predicted to decode one way that falls back on loading (float weights for packed ones, the int8
    kernel for the tiles) stores its answer under what made it: a later process whose model loads as
    predicted is not served it, and one that falls back alike is."""
    inner, client, _ = setup()
    settings = {"weights": "packed", "q8_0_matmul": "bfloat16 tiles"}
    inner.compute_settings = lambda: dict(settings)
    respond = inner.respond

    def load_then_respond(messages, options):
        settings["q8_0_matmul"] = "int8"  # the load's probe refused the tiles
        return respond(messages, options)

    inner.respond = load_then_respond
    assert not (await client.create(HI, extra_create_args={"temperature": 0}, cache=True)).cached
    assert (await client.create(HI, extra_create_args={"temperature": 0}, cache=True)).cached
    settings["q8_0_matmul"] = "bfloat16 tiles"  # a process that has not loaded yet predicts the tiles
    inner.respond = respond
    assert not (await client.create(HI, extra_create_args={"temperature": 0}, cache=True)).cached
    assert len(inner.calls) == 2


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


def test_packed_weights_key_their_answers_on_how_their_layers_multiply(monkeypatch, tiny_model_dir):
    """The int8 dot kernel, the tiles and torch's kernels differ: an answer from one is not served to another."""
    from aloekit.agents.backends import local

    monkeypatch.setattr(local, "packed_kernels_missing", lambda: None)
    keys = set()
    for dot_missing, tiles in ((None, True), ("no cc", True), ("no cc", False)):
        monkeypatch.setattr(local, "int8_dot_missing", lambda dot_missing=dot_missing: dot_missing)
        monkeypatch.setattr(local, "cpu_has_bfloat16_tiles", lambda tiles=tiles: tiles)
        client = local.TransformersChatClient(tiny_model_dir, device="cpu", gguf=tiny_model_dir, dtype="bfloat16")
        managed = BackendPool(AloeConfig()).client(f"hf:{tiny_model_dir}")
        monkeypatch.setattr(managed, "inner", client)
        keys.add(cache_key("local:x", to_dicts(HI), {"temperature": 0}, managed._cache_compute()))
    assert len(keys) == 3


async def test_a_model_or_adapter_replaced_in_place_is_not_served_its_predecessor_s_answers(tmp_path, tiny_model_dir):
    store, folder = Store(tmp_path / "aloe.db"), tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": null}')
    (adapter / "adapter_model.safetensors").write_bytes(b"old")  # never loaded: keys need no model

    def cached_answer_key(spec: str) -> str:
        client = BackendPool(AloeConfig(), store=store).client(spec)
        return cache_key(spec, to_dicts(HI), {"temperature": 0}, client._cache_compute())

    base, adapted = cached_answer_key(f"hf:{folder}"), cached_answer_key(f"hf:{folder}+{adapter}")
    assert base == cached_answer_key(f"hf:{folder}") != adapted  # unchanged files: the same key
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(1, 1))  # touched (copied without its dates): the same content, the same key
    assert cached_answer_key(f"hf:{folder}") == base
    weights.write_bytes(weights.read_bytes() + b"\0")  # retrained in place: other content
    assert cached_answer_key(f"hf:{folder}") != base
    (adapter / "adapter_model.safetensors").write_bytes(b"new")
    assert cached_answer_key(f"hf:{folder}+{adapter}") != adapted
    # A server reports no weights of its own: its keys stay what they were.
    server = "openai:http://127.0.0.1:9/v1#m"
    assert BackendPool(AloeConfig()).client(server)._cache_compute() == {}


async def test_the_cached_answer_of_a_replaced_model_is_made_again(tmp_path, tiny_model_dir):
    store, folder = Store(tmp_path / "aloe.db"), tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)

    async def cached() -> bool:
        pool = BackendPool(AloeConfig(), store=store)
        result = await pool.client(f"hf:{folder}").create(HI, extra_create_args={"temperature": 0, "max_tokens": 3},
                                                          cache=True)  # fmt: skip
        await pool.aclose()
        return result.cached

    assert not await cached() and await cached()
    config = folder / "config.json"
    config.write_text(config.read_text() + "\n")  # replaced in place: other content
    assert not await cached()
