"""Packed GGUF weights: blocks read as gguf-py reads them, kernels that multiply as the float weights do, only
decoding steps taking them, when they are chosen, and local:smollm2 decoding with its own blocks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from aloekit.agents.backends import local, packed
from aloekit.agents.backends.int8_dot import Int8DotMatmul, int8_dot_missing
from aloekit.agents.backends.local import resolve_weights

needs_kernels = pytest.mark.skipif(
    packed.packed_kernels_missing() is not None, reason=f"no packed kernels: {packed.packed_kernels_missing()}"
)
Q4_1, Q8_0 = GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0


def _weight(rows: int = 48, columns: int = 96) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, columns)).astype(np.float32)


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference).norm() / reference.norm())


@pytest.mark.parametrize(("kind", "name"), [(Q4_1, "Q4_1"), (Q8_0, "Q8_0")])
def test_blocks_decode_bit_for_bit_as_gguf_py_reads_them(kind, name):
    raw = quantize(_weight(), kind)
    assert np.array_equal(packed._dequantized(name, raw), dequantize(raw, kind))


def test_q4_1_codes_scales_and_minimums_rebuild_the_weight():
    raw = quantize(_weight(), Q4_1)
    codes, scales, minimums = packed._q4_1_blocks(raw)
    assert codes.shape == (48, 96) and codes.min() >= 0 and codes.max() <= 15 and scales.shape == (48, 3)
    rebuilt = np.repeat(scales, 32, axis=1) * codes + np.repeat(minimums, 32, axis=1)
    assert np.array_equal(rebuilt, dequantize(raw, Q4_1))


@needs_kernels
def test_packed_kernels_multiply_as_the_float_weights():
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 96)).astype(np.float32))
    raw = quantize(_weight(), Q4_1)
    reference = x @ torch.from_numpy(dequantize(raw, Q4_1)).T
    assert _relative_error(packed._q4_matmul(*packed._q4_1_blocks(raw))(x.bfloat16()), reference) < 0.01
    weight = dequantize(quantize(_weight(), Q8_0), Q8_0)
    reference = x @ torch.from_numpy(weight).T
    assert _relative_error(packed.Q8Matmul.from_codes(*packed.per_row_int8(weight))(x.bfloat16()), reference) < 0.01


def _torch_before(version: str) -> bool:
    from packaging.version import Version

    return Version(torch.__version__.split("+")[0]) < Version(version)


@pytest.mark.parametrize("shape", [(80, 96), (16, 64), (3072, 576)])
def test_the_bfloat16_tiles_matmul_equals_linear_row_by_row(shape):
    weight = torch.from_numpy(_weight(*shape))  # float32, as before the model takes its dtype: rounded alike
    matmul = packed.bfloat16_tiles_matmul(weight)
    assert packed.bfloat16_tiles_matmul(torch.from_numpy(_weight(16, 48))) is None  # fewer than 64 inputs
    if matmul is None:
        # A CPU with AMX tiles has it on torch 2.13 (CI's); torch 2.11's oneDNN picks kernels by the batch size
        # for some shapes (3072 x 576: a row differs alone and in company), which the probe refuses.
        assert not local.cpu_has_bfloat16_tiles() or _torch_before("2.13")
        pytest.skip("this torch and CPU have no oneDNN bfloat16 path equal to linear")
    x = torch.randn(70, shape[1]).bfloat16()
    out = matmul(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[:32], torch.nn.functional.linear(x[:32, None], weight.bfloat16())[:, 0])
    # a row alone or in a batch of any size (oneDNN changes kernel above 32 rows: 3072 x 576 showed it)
    assert all(torch.equal(matmul(x[:rows]), out[:rows]) for rows in range(1, 70))
    assert all(torch.equal(matmul(x[row : row + 1]), out[row : row + 1]) for row in range(70))
    strided = torch.randn(5, 3, shape[1]).bfloat16()[:, -1]  # a prompt's last positions, as transformers slices
    assert torch.equal(matmul(strided), matmul(strided.contiguous()))


@needs_kernels
@pytest.mark.parametrize("tiles", [False, True])
def test_a_q8_0_layer_decodes_through_the_tiles_only_when_asked(monkeypatch, tiles):
    weight = dequantize(quantize(_weight(32, 64), Q8_0), Q8_0)
    codes, row_scales = packed.per_row_int8(weight)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False)).bfloat16()
    net[0].weight.data = torch.from_numpy(weight).bfloat16()
    assert packed.pack_linears(net, {"0.int8": codes, "0.row_scales": row_scales}, tiles=tiles) == 1
    x = torch.randn(3, 1, 64).bfloat16()
    on_tiles = packed.bfloat16_tiles_matmul(net[0].weight) is not None
    if tiles and on_tiles:
        assert torch.equal(net(x), torch.nn.functional.linear(x, net[0].weight))  # its own weight
    else:
        assert torch.equal(net(x)[:, 0], packed.Q8Matmul.from_codes(codes, row_scales)(x[:, 0]))  # the int8 kernel
    monkeypatch.setattr(packed, "bfloat16_tiles_matmul", lambda weight: None)  # no oneDNN path: int8 again
    assert packed.pack_linears(net, {"0.int8": codes, "0.row_scales": row_scales}, tiles=tiles) == 1
    assert torch.equal(net(x)[:, 0], packed.Q8Matmul.from_codes(codes, row_scales)(x[:, 0]))


def test_only_decoding_steps_take_the_packed_kernel():
    layer, calls = torch.nn.Linear(32, 16, bias=False), []

    def kernel(x: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(x.shape), x.dtype))
        return torch.zeros(x.shape[0], 16, dtype=torch.bfloat16)

    layer.__class__, layer.packed_matmul = packed._packed_class(), kernel
    step = layer(torch.ones(4, 1, 32))
    assert calls == [((4, 32), torch.bfloat16)] and step.shape == (4, 1, 16) and step.dtype == torch.float32
    assert not step.any()
    prompt = torch.ones(4, 5, 32)  # a prompt's tokens run on the float weight, whatever the batch
    assert torch.equal(layer(prompt), torch.nn.functional.linear(prompt, layer.weight)) and len(calls) == 1
    assert isinstance(layer, torch.nn.Linear)  # what peft looks for when it wraps a layer with an adapter


@needs_kernels
def test_a_peft_adapter_wraps_a_packed_layer_and_adds_its_update():
    from peft import LoraConfig, get_peft_model

    raw = quantize(_weight(64, 96), Q4_1)
    net = torch.nn.Sequential(torch.nn.Linear(96, 64, bias=False))
    net[0].weight.data = torch.from_numpy(dequantize(raw, Q4_1))
    codes, scales, minimums = packed._q4_1_blocks(raw)
    assert packed.pack_linears(net, {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}) == 1
    step = torch.randn(2, 1, 96)
    base = net(step)
    model = get_peft_model(net, LoraConfig(target_modules=["0"], r=4, init_lora_weights=False))
    lora = model.base_model.model[0]
    update = lora.lora_B["default"](lora.lora_A["default"](step)) * lora.scaling["default"]
    assert update.abs().max() > 0.01 and torch.allclose(model(step), base + update, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("rows", [(64, 32), (576, 192, 192), (32, 16, 48), (16, 16), (80, 64)])
def test_joined_int4_matmuls_equal_their_parts_or_are_refused(rows):
    rng = np.random.default_rng(0)
    parts = [packed._q4_matmul(rng.integers(0, 16, (n, 64)).astype(np.uint8), rng.random((n, 2)).astype(np.float32),
                               -rng.random((n, 2)).astype(np.float32)) for n in rows]  # fmt: skip
    joined, x = packed.Q4Matmul.joined(parts), torch.randn(5, 64).bfloat16()
    if all(n % 64 == 0 for n in rows[:-1]):  # whole blocks of torch's layout (AVX-512: 64 rows) join
        assert joined is not None
    if joined is not None:
        assert torch.equal(joined(x), torch.cat([part(x) for part in parts], dim=-1))


@needs_kernels
def test_only_matmuls_of_one_joining_kind_are_joined():
    """What the plain step and bench_engine join: one kind that joins (a layer a kernel refused took another)."""
    rng = np.random.default_rng(0)
    q4 = [packed._q4_matmul(rng.integers(0, 16, (64, 64)).astype(np.uint8), np.ones((64, 2), np.float32),
                            np.zeros((64, 2), np.float32)) for _ in range(2)]  # fmt: skip
    q8 = packed.Q8Matmul.from_codes(np.ones((64, 64), np.int8), np.ones(64, np.float32))
    x = torch.randn(3, 64).bfloat16()
    assert torch.equal(packed.joined_product(q4)(x), torch.cat([part(x) for part in q4], dim=-1))
    assert packed.joined_product([q4[0], q8]) is None and packed.joined_product([q8, q8]) is None


@needs_kernels
def test_a_layer_the_kernels_refuse_stays_float():
    codes, scales, minimums = packed._q4_1_blocks(quantize(_weight(8, 32), Q4_1))  # 8 rows: int4 wants 16s
    net = torch.nn.Sequential(torch.nn.Linear(32, 8, bias=False))
    arrays = {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}
    assert packed.pack_linears(net, arrays) == 0
    step = torch.ones(2, 1, 32)
    assert torch.equal(net(step), torch.nn.functional.linear(step, net[0].weight))


@needs_kernels
def test_arrays_of_another_shape_leave_the_layer_float():
    codes, scales, minimums = packed._q4_1_blocks(quantize(_weight(32, 64), Q4_1))
    arrays = {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}
    for rows, columns in ((16, 64), (32, 32)):  # fewer outputs (the kernel would return 32), other inputs
        net = torch.nn.Sequential(torch.nn.Linear(columns, rows, bias=False))
        assert packed.pack_linears(net, arrays) == 0 and type(net[0]) is torch.nn.Linear
    net = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
    assert packed.pack_linears(net, arrays) == 1


@needs_kernels
def test_layers_an_adapter_trains_in_full_stay_float():
    codes, scales, minimums = packed._q4_1_blocks(quantize(_weight(16, 32), Q4_1))
    net = torch.nn.ModuleDict(
        {"head": torch.nn.Linear(32, 16, bias=False), "lm_head": torch.nn.Linear(32, 16, bias=False)}
    )
    arrays = {f"{name}.{part}": array for name in net for part, array in
              (("codes", codes), ("scales", scales), ("minimums", minimums))}  # fmt: skip
    # peft matches modules_to_save as a whole name or a dotted suffix: "head" is not "lm_head".
    assert packed.pack_linears(net, arrays, skip=("head",)) == 1
    assert type(net["head"]) is torch.nn.Linear and type(net["lm_head"]) is packed._packed_class()


def test_rows_are_matched_bit_for_bit_in_any_order():
    weight = _weight(6, 32)
    order = packed._row_order(weight[[3, 0, 5, 1, 4, 2]], weight)
    assert order is not None and np.array_equal(weight[[3, 0, 5, 1, 4, 2]][order], weight)
    nudged = weight.copy()
    nudged[2, 7] = np.nextafter(nudged[2, 7], np.float32(np.inf))
    assert packed._row_order(nudged, weight) is None
    assert packed._row_order(weight[:5], weight) is None


def test_packed_is_chosen_only_where_it_can_run(monkeypatch, caplog):
    monkeypatch.setattr(local, "packed_kernels_missing", lambda: None)
    assert resolve_weights("auto", "cpu", "float32", "static", gguf=True) == "packed"
    assert resolve_weights("auto", "cpu", "bfloat16", "static", gguf=True) == "packed"
    assert resolve_weights("packed", "cpu", "float32", "static", gguf=True) == "packed"
    for case in (("cuda", "float32", "static", True), ("cpu", "float16", "static", True),
                 ("cpu", "float32", "continuous", True), ("cpu", "float32", "static", False)):  # fmt: skip
        assert resolve_weights("auto", *case) == "float"
    assert resolve_weights("float", "cpu", "float32", "static", gguf=True) == "float"
    assert not caplog.records  # auto falls back quietly
    monkeypatch.setattr(local, "packed_kernels_missing", lambda: "torch 2.0 lacks _weight_int8pack_mm")
    assert resolve_weights("auto", "cpu", "float32", "static", gguf=True) == "float" and not caplog.records
    with caplog.at_level(logging.WARNING):
        assert resolve_weights("packed", "cpu", "float32", "static", gguf=True) == "float"
    assert "packed weights unavailable, decoding in float: torch 2.0 lacks _weight_int8pack_mm" in caplog.text


def test_blocks_still_serve_a_load_when_the_cache_cannot_be_written(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(packed, "match_gguf_blocks", lambda model, gguf: {"layer.int8": np.ones((16, 32), np.int8)})
    read_only = tmp_path / "model"  # a folder that is not there stands for one that cannot be written
    with caplog.at_level(logging.WARNING):
        arrays = packed.cached_gguf_blocks(None, tmp_path / "x.gguf", read_only)
    assert list(arrays) == ["layer.int8"] and "could not cache the packed blocks" in caplog.text
    (tmp_path / "model").mkdir()
    packed.cached_gguf_blocks(None, tmp_path / "x.gguf", read_only)
    monkeypatch.setattr(packed, "match_gguf_blocks", lambda model, gguf: pytest.fail("read again"))
    assert (packed.cached_gguf_blocks(None, tmp_path / "x.gguf", read_only)["layer.int8"] == 1).all()


def test_a_cache_written_before_the_q8_0_blocks_is_matched_again_and_removed(monkeypatch, tmp_path):
    """The first cache had no Q8_0 blocks, which the int8 dot kernel takes: its blocks are not read, and the file
    goes once the new one is written."""
    folder = tmp_path / "model"
    folder.mkdir()
    old = folder / packed.OLD_CACHE_NAMES[0]
    old.write_bytes(b"an earlier cache")
    assert not packed.blocks_cached(folder)  # the model loads as float32 to be matched again
    matched = {"lm_head.int8": np.ones((16, 32), np.int8), "lm_head.q8_0_codes": np.ones((16, 32), np.int8)}
    monkeypatch.setattr(packed, "match_gguf_blocks", lambda model, gguf: matched)
    assert packed.cached_gguf_blocks(None, tmp_path / "x.gguf", folder).keys() == matched.keys()
    assert packed.blocks_cached(folder) and not old.exists()


@needs_kernels
def test_kernels_are_found_on_this_torch():
    assert packed.packed_kernels_missing() is None


def _decoded_logits(model, prompt_ids: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """The next-token logits at each step of decoding ``tokens`` after the prompt, one token at a time."""
    out = model(prompt_ids, use_cache=True, logits_to_keep=1)  # as generate() asks
    logits = [out.logits[0, -1]]
    for token in tokens[:-1]:
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[0, -1])
    return torch.stack(logits)


@needs_kernels
@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "int8_dot", [False, pytest.param(True, marks=pytest.mark.skipif(int8_dot_missing() is not None, reason="no dot"))]
)
def test_smollm2_decodes_with_its_own_gguf_blocks(int8_dot):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = local.find_smollm2_gguf()
    folder = local.converted_model_dir(gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    arrays = packed.cached_gguf_blocks(model, gguf, folder)
    # Every linear layer found in the file: 30 blocks x 7 Q4_1 layers, and the Q8_0 output layer.
    assert sum(k.endswith(".codes") for k in arrays) == 210
    assert [k for k in arrays if k.endswith(".int8")] == ["lm_head.int8"]
    # and the output layer's own Q8_0 blocks, which are its float weight bit for bit
    codes, scales = arrays["lm_head.q8_0_codes"], arrays["lm_head.q8_0_scales"]
    rebuilt = codes.reshape(len(codes), -1, 32).astype(np.float32) * scales[..., None]
    assert np.array_equal(rebuilt.reshape(codes.shape), model.lm_head.weight.detach().numpy())
    assert packed.cached_gguf_blocks(model, gguf, folder).keys() == arrays.keys()  # read back from the cache
    chat = [{"role": "user", "content": "Give me a tip about chess."}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = prompt["input_ids"]
    with torch.inference_mode():
        reply = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :].tolist()
        float_logits = _decoded_logits(model, ids, reply)
        assert packed.pack_linears(model, arrays, int8_dot=int8_dot) == 211
        assert isinstance(model.lm_head.packed_matmul, Int8DotMatmul) == int8_dot
        packed_logits = _decoded_logits(model, ids, reply)
    agreement = (float_logits.argmax(-1) == packed_logits.argmax(-1)).float().mean()
    divergence = torch.nn.functional.kl_div(packed_logits.log_softmax(-1), float_logits.log_softmax(-1),
                                            log_target=True, reduction="batchmean")  # fmt: skip
    # benchmarks/bench_packed_quality.py, 576 steps of 12 replies: 96.4% the same greedy token, KL 0.0017
    # (bfloat16 weights: 96.9%, 0.0011).
    assert agreement >= 0.85 and divergence < 0.02


@needs_kernels
@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="packed weights are for CPU decoding")
async def test_local_smollm2_decodes_packed_by_default_on_cpu():
    from aloekit.agents.backends import from_dicts
    from aloekit.agents.backends.registry import parse_spec
    from aloekit.config import BackendSettings

    spec = parse_spec("local:smollm2")
    client = local.build_local_client(spec, BackendSettings())
    chat = from_dicts([{"role": "user", "content": "Name a fruit."}])
    result = await client.create(chat, extra_create_args={"max_tokens": 8, "temperature": 0})
    assert client.weights == "packed" and result.content.strip() and result.usage.completion_tokens > 0
    floating = local.build_local_client(spec, BackendSettings(weights="float"))
    floating.load()
    assert floating.weights == "float"


@needs_kernels
@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="packed weights are for CPU decoding")
async def test_local_smollm2_decodes_packed_in_bfloat16():
    """The blocks are matched to the float32 weights, then the model computes in bfloat16 (the default on a CPU
    with AMX tiles)."""
    from aloekit.agents.backends import from_dicts
    from aloekit.agents.backends.registry import parse_spec
    from aloekit.config import BackendSettings

    client = local.build_local_client(parse_spec("local:smollm2"), BackendSettings(dtype="bfloat16"))
    chat = from_dicts([{"role": "user", "content": "Name a fruit."}])
    result = await client.create(chat, extra_create_args={"max_tokens": 8, "temperature": 0})
    model = client.model
    assert client.weights == "packed" and client.dtype == "bfloat16" and result.content.strip()
    assert sum(type(module) is packed._packed_class() for module in model.modules()) == 211
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers as from_pretrained leaves them
    x, head = torch.randn(3, 576).bfloat16(), model.lm_head
    blocks = packed.cached_gguf_blocks(model, local.find_smollm2_gguf(), client._path)  # read back from the cache
    int8 = packed.Q8Matmul.from_codes(blocks["lm_head.int8"], blocks["lm_head.row_scales"])
    # the Q8_0 output layer: its own bfloat16 weight where the CPU has AMX tiles and the probe found them equal
    # to linear row by row in any batch (torch 2.13), else the int8 kernel; the compute settings say which
    # the Q4_1 layers: the compiled int8 dot kernel where this process has it, else torch's int4 kernel
    dot = int8_dot_missing() is None
    assert type(model.model.layers[0].mlp.up_proj.packed_matmul) is (Int8DotMatmul if dot else packed.Q4Matmul)
    assert client.compute_settings()["q4_1_matmul"] == ("int8 dot" if dot else "int4")
    if dot:  # the Q8_0 output layer too, with its own blocks: the same as the kernel on the file's codes
        codes, scales = blocks["lm_head.q8_0_codes"], blocks["lm_head.q8_0_scales"]
        assert torch.equal(head.packed_matmul(x), Int8DotMatmul.q8_0(codes, scales)(x))
        assert client.compute_settings()["q8_0_matmul"] == "int8 dot"
        return
    tiles = isinstance(head.packed_matmul, packed.BFloat16TilesMatmul)
    if not _torch_before("2.13"):
        assert tiles == local.cpu_has_bfloat16_tiles()
    assert torch.equal(head.packed_matmul(x), torch.nn.functional.linear(x, head.weight) if tiles else int8(x))
    assert client.compute_settings()["q8_0_matmul"] == ("bfloat16 tiles" if tiles else "int8")


@needs_kernels
@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="packed weights are for CPU decoding")
async def test_an_adapter_s_fully_trained_layers_decode_with_their_own_weights(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from aloekit.agents.backends import from_dicts
    from aloekit.agents.backends.registry import parse_spec
    from aloekit.config import BackendSettings

    base = AutoModelForCausalLM.from_pretrained(local.converted_model_dir(local.find_smollm2_gguf()))
    config = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["o_proj"], layers_to_transform=[0])
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    client = local.build_local_client(parse_spec(f"local:smollm2+{tmp_path / 'adapter'}"), BackendSettings())
    chat = from_dicts([{"role": "user", "content": "Name a fruit."}])
    assert (await client.create(chat, extra_create_args={"max_tokens": 4, "temperature": 0})).content.strip()
    kinds = {name: type(module).__name__ for name, module in client.model.named_modules()}
    assert kinds["base_model.model.model.layers.0.self_attn.q_proj.base_layer"] == "PackedLinear"  # LoRA on top
    assert kinds["base_model.model.model.layers.1.self_attn.q_proj"] == "PackedLinear"  # no LoRA in layer 1
    # peft copies each o_proj and trains the copy: neither may decode with the base model's blocks.
    saved = {name: kind for name, kind in kinds.items() if ".o_proj." in name and kind.endswith("Linear")}
    assert len(saved) == 60 and set(saved.values()) == {"Linear"}


@pytest.mark.parametrize(("weights", "level"), [("packed", logging.WARNING), ("auto", logging.INFO)])
def test_a_gguf_without_q4_1_or_q8_0_layers_decodes_in_float_and_says_so(
    monkeypatch, caplog, tiny_model_dir, tmp_path, weights, level
):
    from aloekit.agents.backends import TransformersChatClient

    monkeypatch.setattr(local, "packed_kernels_missing", lambda: None)
    monkeypatch.setattr(local, "cached_gguf_blocks", lambda model, gguf, folder: {})  # e.g. a Q4_K_M file
    client = TransformersChatClient(tiny_model_dir, device="cpu", gguf=tmp_path / "x.gguf", weights=weights)
    with caplog.at_level(logging.INFO, logger=local.logger.name):
        client.load()
    assert client.weights == "float" and "q8_0_matmul" not in client.compute_settings()
    said = [r for r in caplog.records if "no Q4_1 or Q8_0 layer" in r.getMessage()]
    assert [r.levelno for r in said] == [level]


def test_unreadable_blocks_decode_in_float_unless_packed_was_asked(monkeypatch, tiny_model_dir, tmp_path):
    from aloekit.agents.backends import TransformersChatClient
    from aloekit.errors import BackendError

    def unreadable(model, gguf, folder):
        raise OSError(f"{gguf}: not a GGUF file")

    monkeypatch.setattr(local, "packed_kernels_missing", lambda: None)
    monkeypatch.setattr(local, "cached_gguf_blocks", unreadable)
    automatic = TransformersChatClient(tiny_model_dir, device="cpu", gguf=tmp_path / "x.gguf")
    assert automatic.compute_settings()["weights"] == "packed"  # what it expects before loading
    automatic.load()
    assert automatic.weights == "float" and automatic.compute_settings()["weights"] == "float"
    assert "q8_0_matmul" not in automatic.compute_settings()  # float weights have no Q8_0 layers
    asked = TransformersChatClient(tiny_model_dir, device="cpu", gguf=tmp_path / "x.gguf", weights="packed")
    with pytest.raises(BackendError, match=r"could not read the blocks of .*x\.gguf: OSError: .*not a GGUF file"):
        asked.load()


@pytest.mark.parametrize(
    ("dtype", "cpu_tiles", "dot_missing", "head", "predicted", "q8_0_matmul"),
    [("bfloat16", True, None, "int8 dot", "int8 dot", "int8 dot"),
     ("bfloat16", True, None, "bfloat16 tiles", "int8 dot", "bfloat16 tiles"),  # the int8 dot kernel refused it
     ("bfloat16", False, None, "int8", "int8 dot", "int8"),  # the cache had no Q8_0 blocks: torch's int8 kernel
     ("bfloat16", True, None, None, "int8 dot", "int8 dot"),  # None: the file has no Q8_0 layer
     ("bfloat16", True, "no cc", "bfloat16 tiles", "bfloat16 tiles", "bfloat16 tiles"),
     ("bfloat16", True, "no cc", "int8", "bfloat16 tiles", "int8"),  # the tiles' probe refused them
     ("bfloat16", False, "no cc", "int8", "int8", "int8"), ("float32", True, "no cc", "int8", "int8", "int8"),
     ("bfloat16", True, "no cc", None, "bfloat16 tiles", "bfloat16 tiles")],
)  # fmt: skip
def test_the_compute_settings_say_which_kernels_the_packed_layers_took(
    monkeypatch, tiny_model_dir, tmp_path, dtype, cpu_tiles, dot_missing, head, predicted, q8_0_matmul
):
    """The compute settings (which the response cache keys on and the run config records) predict the packed
    layers' kernels before the load and say after it which they took: the compiled int8 dot kernel for Q4_1
    and Q8_0 layers where this process has it, else torch's int4 kernel, and for the Q8_0 layers the AMX tiles
    (a bfloat16 model on a CPU with them) or torch's int8 kernel where a kernel before them refused the layer; a
    kind of layer the file lacks keeps the prediction."""
    from aloekit.agents.backends import TransformersChatClient

    asked = []
    took = {"int8 dot": object.__new__(Int8DotMatmul), "bfloat16 tiles": packed.BFloat16TilesMatmul(None),
            "int8": packed.Q8Matmul(None, None)}  # fmt: skip

    def pack(model, arrays, skip, tiles, int8_dot):
        asked.append((tiles, int8_dot))
        up = object.__new__(Int8DotMatmul) if int8_dot else packed.Q4Matmul(None, None)
        model.model.layers[0].mlp.up_proj.packed_matmul = up
        if head is not None:
            model.lm_head.packed_matmul = took[head]
        return 1 if head is None else 2

    monkeypatch.setattr(local, "packed_kernels_missing", lambda: None)
    monkeypatch.setattr(local, "int8_dot_missing", lambda: dot_missing)
    monkeypatch.setattr(local, "cpu_has_bfloat16_tiles", lambda: cpu_tiles)
    blocks = {"lm_head.int8": None, "model.layers.0.mlp.up_proj.codes": None}
    monkeypatch.setattr(local, "cached_gguf_blocks", lambda model, gguf, folder: blocks)
    monkeypatch.setattr(local, "pack_linears", pack)
    client = TransformersChatClient(tiny_model_dir, device="cpu", gguf=tmp_path / "x.gguf", dtype=dtype)
    q4_1 = "int8 dot" if dot_missing is None else "int4"
    settings = {"engine": "static", "dtype": dtype, "weights": "packed", "q4_1_matmul": q4_1}
    assert client.compute_settings() == settings | {"q8_0_matmul": predicted}
    client.load()
    assert asked == [(dtype == "bfloat16" and cpu_tiles, dot_missing is None)]
    assert client.compute_settings() == settings | {"q8_0_matmul": q8_0_matmul}


def test_kernels_taken_names_each_kind_s_kernels():
    """Layers of one kind on several kernels are all named, so the settings never claim one kernel for all."""
    net = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(4)))
    dot = object.__new__(Int8DotMatmul)
    for layer, matmul in zip(net, (packed.Q4Matmul(None, None), dot, packed.Q8Matmul(None, None), dot), strict=True):
        layer.packed_matmul = matmul
    arrays = {"0.codes": None, "1.codes": None, "2.int8": None}  # layer 3 has no blocks: not counted
    assert packed.kernels_taken(net, arrays) == {"q4_1_matmul": "int4 + int8 dot", "q8_0_matmul": "int8"}
    assert packed.kernels_taken(torch.nn.Sequential(torch.nn.Linear(4, 4)), arrays) == {}


@pytest.mark.parametrize("cached", [False, True])
def test_blocks_are_matched_in_float32_then_the_model_takes_its_dtype(monkeypatch, tiny_model_dir, tmp_path, cached):
    """Matching needs the float32 weights, once: with the blocks cached, the model loads as its dtype directly
    (no transient float32 copy); either way it computes in that dtype."""
    import shutil

    from aloekit.agents.backends import TransformersChatClient

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    if cached:
        (folder / packed.CACHE_NAME).touch()
    matched_in = []

    def blocks(model, gguf, folder):
        matched_in.append(model.dtype)
        return {}  # no layer to pack: it decodes in float

    monkeypatch.setattr(local, "packed_kernels_missing", lambda: None)
    monkeypatch.setattr(local, "cached_gguf_blocks", blocks)
    client = TransformersChatClient(folder, device="cpu", gguf=tmp_path / "x.gguf", dtype="bfloat16")
    client.load()
    assert matched_in == [torch.bfloat16 if cached else torch.float32]
    assert client.model.dtype == torch.bfloat16 and client.dtype == "bfloat16" and client.weights == "float"
