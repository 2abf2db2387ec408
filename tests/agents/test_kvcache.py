"""The static engine's KV cache appends in place and holds exactly what transformers' ``DynamicCache`` would."""

import asyncio

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, Qwen2Config
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from aloekit.agents.backends import TransformersChatClient, from_dicts, local
from aloekit.agents.backends.kvcache import MIN_SPARE, growing_cache

ROOM = 16
CONFIG = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def states(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 2, length, 8, generator=generator) for _ in range(2))  # type: ignore[return-value]


def test_appends_write_into_the_buffer_and_equal_concatenation():
    growing, plain = growing_cache(CONFIG, room=ROOM).layers[0], DynamicLayer()
    growing.update(*states(3, 5, seed=0))
    plain.update(*states(3, 5, seed=0))
    buffer = growing.key_buffer.data_ptr()
    for step in range(ROOM):
        keys, values = growing.update(*states(3, 1, seed=step + 1))
        expected = plain.update(*states(3, 1, seed=step + 1))
        assert torch.equal(keys, expected[0]) and torch.equal(values, expected[1])
    # the room's 16 steps fit the first buffer: none copied the cache (DynamicCache's torch.cat copies it all)
    assert growing.key_buffer.data_ptr() == buffer and growing.get_seq_length() == 5 + ROOM
    growing.update(*states(3, 40, seed=99))  # past the room (a caller's mistake): a longer buffer, nothing lost
    expected = plain.update(*states(3, 40, seed=99))
    assert growing.key_buffer.data_ptr() != buffer and torch.equal(growing.keys, expected[0])


def test_spare_room_is_half_what_is_held_within_what_the_batch_may_generate():
    layer = growing_cache(CONFIG, room=1000).layers[0]  # a batch allowed 1000 new tokens reserves no 1000
    layer.update(*states(1, 5, seed=0))
    assert layer.key_buffer.shape[-2] == 5 + MIN_SPARE
    layer.update(*states(1, 300, seed=1))
    assert layer.key_buffer.shape[-2] == 305 + 305 // 2
    short = growing_cache(CONFIG, room=8).layers[0]  # a judge's 8 tokens: no more than that spare
    short.update(*states(1, 300, seed=0))
    assert short.key_buffer.shape[-2] == 308


@pytest.mark.parametrize(
    "operation",
    [
        lambda layer: layer.reorder_cache(torch.tensor([2, 0])),  # rows leaving a static batch
        lambda layer: layer.reorder_cache(torch.tensor([1, 2, 0])),  # beam search's: the same batch size
        lambda layer: layer.batch_select_indices(torch.tensor([1])),
        lambda layer: layer.crop(-2),
        lambda layer: layer.batch_repeat_interleave(2),
    ],
    ids=["reorder", "permute", "select", "crop", "repeat"],
)
def test_what_the_parent_class_does_to_the_cache_is_kept(operation):
    growing, plain = growing_cache(CONFIG, room=ROOM).layers[0], DynamicLayer()
    for layer in (growing, plain):
        layer.update(*states(3, 6, seed=0))
        layer.update(*states(3, 1, seed=1))
        operation(layer)
    batch = plain.keys.shape[0]
    for step in range(3):
        keys, values = growing.update(*states(batch, 1, seed=10 + step))
        expected = plain.update(*states(batch, 1, seed=10 + step))
        assert torch.equal(keys, expected[0]) and torch.equal(values, expected[1])


def test_only_full_attention_layers_are_replaced():
    config = Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         use_sliding_window=True, sliding_window=16, max_window_layers=1)  # fmt: skip
    kinds = [type(layer) for layer in DynamicCache(config=config).layers]
    assert DynamicSlidingWindowLayer in kinds and DynamicLayer in kinds
    for layer, kind in zip(growing_cache(config, room=ROOM).layers, kinds, strict=True):
        if kind is DynamicSlidingWindowLayer:  # kept as transformers made it
            assert type(layer) is DynamicSlidingWindowLayer
        else:  # the growing subclass
            assert isinstance(layer, DynamicLayer) and type(layer) is not DynamicLayer


async def test_replies_are_those_of_transformers_dynamic_cache(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(local, "ROUND_TOKENS", 2)  # rows leave between rounds: the cache is reordered

    async def replies() -> list[str]:
        client = TransformersChatClient(tiny_model_dir)
        prompts = ["hello", "what is the capital of france", "the cat likes tea", "say one two three"]
        results = await asyncio.gather(
            *(
                client.create(from_dicts([{"role": "user", "content": p}]), extra_create_args={"max_tokens": n})
                for p, n in zip(prompts, [3, 12, 7, 20], strict=True)
            )
        )
        return [r.content for r in results]

    made = []

    def recorded(config, room):
        made.append(growing_cache(config, room))
        return made[-1]

    monkeypatch.setattr(local, "growing_cache", recorded)
    grown = await replies()
    (cache,) = made  # the one batch decoded with the growing cache, and rows left it between rounds
    assert cache.layers[0].key_buffer is not None and cache.layers[0].keys.shape[0] == 1
    monkeypatch.setattr(local, "growing_cache", lambda config, room: DynamicCache(config=config))
    assert await replies() == grown
