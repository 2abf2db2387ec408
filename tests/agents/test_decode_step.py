"""The plain decoding step: logits equal to transformers' bit for bit (grouped and plain attention, padded
and unpadded batches, float32 and bfloat16, a peft adapter, SmolLM2's packed weights), taken only for
generate's decoding steps and only within the block, and the static engine's replies unchanged by it."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from aloekit.agents.backends import decode_step, from_dicts, local, packed
from aloekit.agents.backends.decode_step import plain_decoding_steps, plain_step
from aloekit.agents.backends.int8_dot import Int8DotMatmul, int8_dot_missing
from aloekit.agents.backends.kvcache import growing_cache
from aloekit.agents.backends.local import TransformersChatClient


def _llama(kv_heads: int = 2, dtype: torch.dtype = torch.float32, **config: object) -> LlamaForCausalLM:
    torch.manual_seed(0)
    settings = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, pad_token_id=0,
                    num_attention_heads=4, num_key_value_heads=kv_heads, attn_implementation="sdpa")  # fmt: skip
    settings |= config
    model = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    local.cast_parameters(model, dtype)  # as aloekit loads a model: the rotary frequencies stay float32
    return model


def _prompts(rows: int, padded: bool) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 64, (rows, 7), generator=torch.Generator().manual_seed(rows))
    mask = torch.ones_like(ids)
    if padded:
        for row in range(rows):  # left padding, as the static engine's tokenizer pads
            mask[row, : row % 4] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def _step_logits(model, encoded, cache_factory, steps: int, plain: bool) -> list[torch.Tensor]:
    """Logits of ``steps`` decoding steps after the prompt, each feeding transformers' greedy token."""
    step = plain_step(model)
    cache, mask = cache_factory(model.config), encoded["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
    with torch.inference_mode():
        logits = model(**encoded, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        seen = []
        for _ in range(steps):
            ids, positions = logits.argmax(-1, keepdim=True), positions + 1
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            if plain:
                logits = step(ids, positions, mask, cache)
            else:
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
                logits = out.logits[:, -1]
            seen.append(logits)
    return seen


CACHES = {"growing": lambda config: growing_cache(config, room=16), "dynamic": lambda c: DynamicCache(config=c)}


def _equal(logits: list[torch.Tensor], others: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(logits, others, strict=True))


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("kv_heads", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "padded"), [(1, False), (3, False), (4, True)])
@pytest.mark.parametrize("cache", sorted(CACHES))
def test_logits_equal_transformers_bit_for_bit(kv_heads, dtype, rows, padded, cache):
    model, encoded = _llama(kv_heads, dtype), _prompts(rows, padded)
    transformers_logits = _step_logits(model, encoded, CACHES[cache], 6, plain=False)
    plain_logits = _step_logits(model, encoded, CACHES[cache], 6, plain=True)
    assert _equal(transformers_logits, plain_logits)


def _packed_llama(
    hidden: int, heads: int, kv_heads: int, intermediate: int, dtype: torch.dtype, int8_dot: bool = False
) -> LlamaForCausalLM:
    """A tiny Llama whose linear layers decode with random Q4_1 blocks and its output layer with random Q8_0 ones,
    through the compiled int8 dot kernel with ``int8_dot``, else through torch's int4 kernel and int8 codes (in
    bfloat16 on a CPU with AMX tiles: its own weight through them), packed then cast as aloekit loads it."""
    model = _llama(kv_heads, hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate)
    rng, arrays = np.random.default_rng(0), {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            rows, groups = module.out_features, module.in_features // 32
            arrays |= {f"{name}.codes": rng.integers(0, 16, (rows, module.in_features)).astype(np.uint8),
                       f"{name}.scales": rng.random((rows, groups)).astype(np.float32) / 8,
                       f"{name}.minimums": -rng.random((rows, groups)).astype(np.float32) / 8}  # fmt: skip
    codes, row_scales = packed.per_row_int8(model.lm_head.weight.detach().numpy())
    arrays |= {
        "lm_head.int8": codes,
        "lm_head.row_scales": row_scales,
        "lm_head.q8_0_codes": rng.integers(-127, 128, codes.shape).astype(np.int8),
        "lm_head.q8_0_scales": rng.random((codes.shape[0], codes.shape[1] // 32)).astype(np.float32) / 64,
    }
    tiles = dtype == torch.bfloat16 and local.cpu_has_bfloat16_tiles()  # as aloekit decides without int8 dot
    assert packed.pack_linears(model, arrays, tiles=tiles, int8_dot=int8_dot) == 7 * 2 + 1
    local.cast_parameters(model, dtype)
    return model


@pytest.mark.skipif(packed.packed_kernels_missing() is not None, reason="no packed kernels on this torch")
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("sizes", "joined"),
    [((128, 2, 1, 128), True),  # q/k/v rows 128/64/64, gate/up 128/128: whole blocks of torch's int4 layout
     ((64, 4, 2, 96), None)],  # k rows 32, gate rows 96: joined only where the layout allows, else one call each
)  # fmt: skip
@pytest.mark.parametrize(
    "int8_dot",
    [False, pytest.param(True, marks=pytest.mark.skipif(int8_dot_missing() is not None, reason="no kernel"))],
)
def test_packed_layers_equal_transformers_bit_for_bit(sizes, joined, dtype, int8_dot):
    model, encoded = _packed_llama(*sizes, dtype=dtype, int8_dot=int8_dot), _prompts(4, True)
    plain = _step_logits(model, encoded, CACHES["growing"], 5, plain=True)
    assert _equal(_step_logits(model, encoded, CACHES["growing"], 5, plain=False), plain)
    x, head = torch.randn(3, model.config.hidden_size).bfloat16(), model.lm_head
    if int8_dot:  # the output layer took the int8 dot kernel, its Q8_0 codes
        assert isinstance(head.packed_matmul, Int8DotMatmul) and head.packed_matmul.bits == 8
    elif dtype == torch.bfloat16 and local.cpu_has_bfloat16_tiles():  # the output layer took the tiles
        assert torch.equal(head.packed_matmul(x), torch.nn.functional.linear(x, head.weight))
    if joined or int8_dot:  # one kernel call for q/k/v and one for gate/up, kept on their modules (int8 dot: any)
        layer = model.model.layers[0]
        assert layer.self_attn._joined_matmul[1] is not None and layer.mlp._joined_matmul[1] is not None


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_a_peft_adapter_s_layers_are_called_as_modules():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_llama(), LoraConfig(target_modules=["q_proj", "down_proj"], r=4, init_lora_weights=False))
    model.eval()
    base, encoded = model.get_base_model(), _prompts(3, True)
    assert plain_step(model).model is base
    plain = _step_logits(base, encoded, CACHES["growing"], 4, plain=True)
    assert _equal(_step_logits(base, encoded, CACHES["growing"], 4, plain=False), plain)
    # the adapter counts: without it the logits differ
    with model.disable_adapter():
        assert not torch.equal(_step_logits(base, encoded, CACHES["growing"], 1, plain=True)[0], plain[0])


def test_other_models_keep_transformers_forward():
    from peft import LoraConfig, get_peft_model

    assert plain_step(_llama()) is not None
    assert plain_step(_llama().train()) is None
    assert plain_step(_llama(attn_implementation="eager")) is None
    assert plain_step(_llama(rope_scaling={"rope_type": "linear", "factor": 2.0})) is None
    assert plain_step(_llama(sliding_window=4)) is None
    hooked = _llama()
    hooked.forward = hooked.forward  # an instance forward of its own, as accelerate's hooks set
    assert plain_step(hooked) is None
    offloaded = _llama()
    offloaded.model.layers[0].mlp._hf_hook = object()  # accelerate's offloading hook on a module
    assert plain_step(offloaded) is None
    # an adapter on a module the step reads directly (the embedding) is not bypassed
    embedding = get_peft_model(_llama(), LoraConfig(target_modules=["embed_tokens"], r=2, init_lora_weights=False))
    assert plain_step(embedding.eval()) is None
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()  # fmt: skip
    assert plain_step(qwen) is None
    with plain_decoding_steps(qwen) as applies:
        assert not applies and "forward" not in qwen.__dict__


@pytest.mark.parametrize(("adapter", "rows"), [(False, 3), (True, 3), (False, 1)])
def test_only_generate_s_decoding_steps_take_it_and_only_within_the_block(monkeypatch, adapter, rows):
    from peft import LoraConfig, get_peft_model

    model, encoded, calls = _llama(), _prompts(rows, True), []  # a lone row: generate passes no mask
    if adapter:  # peft's generate reaches the base model's forward
        model = get_peft_model(model, LoraConfig(target_modules=["q_proj"], r=4, init_lora_weights=False)).eval()
    step_call = decode_step.PlainLlamaStep.__call__

    def counted(self, input_ids, *args):
        calls.append(tuple(input_ids.shape))
        return step_call(self, input_ids, *args)

    monkeypatch.setattr(decode_step.PlainLlamaStep, "__call__", counted)
    with torch.inference_mode():
        reference = model.generate(**encoded, max_new_tokens=5, do_sample=False, pad_token_id=0)
        with plain_decoding_steps(model) as applies:
            assert applies
            output = model.generate(**encoded, max_new_tokens=5, do_sample=False, pad_token_id=0)
            model(**encoded)  # a prompt: transformers' forward
        assert "forward" not in plain_step(model).model.__dict__  # the class's forward again
        model(**encoded)
    assert torch.equal(output, reference) and calls == [(rows, 1)] * 4  # the prompt's pass made the first token


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_only_a_dynamic_cache_of_full_attention_layers_and_its_mask_are_taken():
    from transformers import StaticCache

    model, ids, positions = _llama(), torch.ones(2, 1, dtype=torch.long), torch.full((2, 1), 5)
    step, cache = plain_step(model), DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.ones(2, 5, dtype=torch.long), past_key_values=cache)
    call = {"input_ids": ids, "position_ids": positions, "cache": cache, "attention_mask": torch.ones(2, 6)}
    assert step.takes(call) and step.takes(call | {"attention_mask": None, "use_cache": True})
    assert not step.takes(call | {"attention_mask": torch.ones(2, 7)})  # not over the cache and the token
    assert not step.takes(call | {"cache": StaticCache(config=model.config, max_cache_len=8)})
    assert not step.takes(call | {"return_dict": False}) and not step.takes(call | {"labels": ids})
    assert not step.takes(call | {"input_ids": torch.ones(2, 3, dtype=torch.long)})  # a prompt
    # early 5.x releases pass the cache position, just past the cache for a decoding step
    assert step.takes(call | {"cache_position": torch.tensor([5])})
    assert not step.takes(call | {"cache_position": torch.tensor([4])})
    assert not step.takes(call | {"cache_position": torch.tensor([5, 6])})


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_a_release_that_decides_grouped_attention_from_the_mask_and_keys_alone_is_followed(monkeypatch):
    """transformers 5.0's ``use_gqa_in_sdpa`` takes the mask and the keys; later ones the values too."""
    from transformers.integrations import sdpa_attention

    asked = []

    def two_arguments(attention_mask, key):
        asked.append((attention_mask, key.shape))
        return attention_mask is None

    model, encoded = _llama(kv_heads=2), _prompts(3, False)  # no mask: sdpa's grouped mode
    transformers_logits = _step_logits(model, encoded, CACHES["growing"], 3, plain=False)  # before: it takes three
    monkeypatch.setattr(sdpa_attention, "use_gqa_in_sdpa", two_arguments)
    decode_step._one_token_sdpa.cache_clear()
    try:
        uses_gqa = decode_step._one_token_sdpa()[0]  # kept (cached): the steps below call it
        monkeypatch.undo()  # transformers' own forward (the prompt's pass) calls its own
        assert uses_gqa(None, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4)) and asked == [(None, (1, 2, 3, 4))]
        assert _equal(_step_logits(model, encoded, CACHES["growing"], 3, plain=True), transformers_logits)
        assert len(asked) == 1 + 3 * 2  # each step's two layers asked it
    finally:
        decode_step._one_token_sdpa.cache_clear()


async def test_the_static_engine_s_replies_are_unchanged(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(local, "ROUND_TOKENS", 2)  # rows leave between rounds: the cache is reordered

    async def replies() -> list[str]:
        client = TransformersChatClient(tiny_model_dir)
        prompts = ["hello", "what is the capital of france", "the cat likes tea", "say one two three"]
        sampled = {"temperature": 0.9, "seed": 3}
        results = await asyncio.gather(
            *(
                client.create(from_dicts([{"role": "user", "content": p}]), extra_create_args={"max_tokens": n} | s)
                for p, n, s in zip(prompts, [3, 12, 7, 20], [{}, sampled, {}, sampled], strict=True)
            )
        )
        return [r.content for r in results]

    rows_stepped = []
    step_call = decode_step.PlainLlamaStep.__call__

    def counted(self, input_ids, *args):
        rows_stepped.append(input_ids.shape[0])
        return step_call(self, input_ids, *args)

    monkeypatch.setattr(decode_step.PlainLlamaStep, "__call__", counted)
    plain = await replies()
    # the engine's steps took the plain step: greedy and sampled requests batch apart, two rows each, and one
    # row of each went on alone once the other had left between rounds
    assert rows_stepped[0] == max(rows_stepped) == 2 and 1 in rows_stepped
    monkeypatch.setattr(local, "plain_decoding_steps", lambda model: contextlib.nullcontext(False))
    rows_stepped.clear()
    assert await replies() == plain and not rows_stepped


@pytest.mark.integration
@pytest.mark.skipif(packed.packed_kernels_missing() is not None, reason="no packed kernels on this torch")
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_smollm2_s_packed_steps_equal_transformers_bit_for_bit(dtype):
    from aloekit.agents.backends.registry import parse_spec
    from aloekit.config import BackendSettings

    settings = BackendSettings(weights="packed", dtype=dtype)
    client = local.build_local_client(parse_spec("local:smollm2"), settings)
    client.load()
    chats = [[{"role": "user", "content": f"Give me a tip about {topic}."}] for topic in ("tea", "chess openings")]
    encoded = client.tokenizer([client.render_chat(chat) for chat in chats], return_tensors="pt", padding=True)
    assert client.weights == "packed" and client.dtype == dtype and not encoded["attention_mask"].all()  # padded
    model = client.model
    transformers_logits = _step_logits(model, dict(encoded), CACHES["growing"], 4, plain=False)
    assert _equal(transformers_logits, _step_logits(model, dict(encoded), CACHES["growing"], 4, plain=True))


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_logits_equal_transformers_bit_for_bit_on_cuda():
    model, encoded = _llama(2, torch.bfloat16).cuda(), {k: v.cuda() for k, v in _prompts(4, True).items()}
    assert plain_step(model) is not None  # 5.17 (the GPU image's) and later: checked on CPU
    plain = _step_logits(model, encoded, CACHES["growing"], 6, plain=True)
    assert _equal(_step_logits(model, encoded, CACHES["growing"], 6, plain=False), plain)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_releases_without_pack_gqa_repeat_the_key_and_value_heads(monkeypatch, dtype):
    """transformers before ``pack_gqa`` (5.17, the GPU image's) repeats the key and value heads for a masked
    query token; the step does as that release does (run against 5.17: bit for bit), and the attention it
    computes so is the packed way's, to rounding."""
    from transformers.integrations import sdpa_attention

    model, encoded = _llama(kv_heads=2, dtype=dtype), _prompts(4, True)  # padded: a mask, so no sdpa GQA mode
    packed_way = _step_logits(model, encoded, CACHES["growing"], 4, plain=True)
    repeats = []

    def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
        repeats.append(groups)
        return sdpa_attention.repeat_kv(states, groups)

    uses_gqa = decode_step._one_token_sdpa()[0]  # called as the step calls it on any release
    monkeypatch.setattr(decode_step, "_one_token_sdpa", lambda: (uses_gqa, None, repeat_kv))
    repeated_way = _step_logits(model, encoded, CACHES["growing"], 4, plain=True)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(repeated_way, packed_way, strict=True))
    assert repeats and set(repeats) == {2}  # keys and values of every layer, 2 query heads per key head
