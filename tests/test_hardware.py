"""Hardware-chosen defaults: in-process backends sized from free GPU memory unless the config sets them,
loaded as the dtype the device or the config asks, decoding with the weights it can, and the choices recorded in
the run config."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from aloekit import hardware
from aloekit.agents.backends import TransformersChatClient, from_dicts
from aloekit.agents.backends import local as local_backend
from aloekit.config import AloeConfig
from aloekit.hardware import Hardware, apply_backend_defaults, run_defaults

GPU = Hardware("cuda", "NVIDIA H200", 130.0, "bfloat16", 256)
CPU = Hardware("cpu", "cpu (2 cores)", None, "float32", None)


def test_gpu_sizes_in_process_backends_unless_the_config_sets_them(tiny_model_dir):
    local, server = f"hf:{tiny_model_dir}", "openai:gpt-4o-mini"
    config = apply_backend_defaults(AloeConfig(), [local, server], GPU)
    assert (
        config.backend_settings(local).max_concurrency == 256 and config.backend_settings(local).max_batch_size == 256
    )
    assert config.backend_settings(server).max_concurrency == 8  # a server keeps its own limit
    chosen = AloeConfig(backend={"max_concurrency": 12}, backends={local: {"max_batch_size": 4}})
    config = apply_backend_defaults(chosen, [local], GPU)
    assert config.backend_settings(local).max_concurrency == 12 and config.backend_settings(local).max_batch_size == 4
    assert apply_backend_defaults(AloeConfig(), [local], CPU) == AloeConfig()  # CPU: the defaults stand


def test_run_defaults_raise_conversations_only_when_every_role_is_in_process(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(hardware, "detect", lambda: GPU)
    monkeypatch.setattr(local_backend, "continuous_batching_available", lambda: None)  # any transformers
    local = f"hf:{tiny_model_dir}"
    _, conversations, record = run_defaults(AloeConfig(), [local], 8, concurrency_given=False)
    assert conversations == 64 and record["device"] == "cuda" and record["conversations"] == 64
    assert record["in_flight"] == 256 and record["engines"] == {local: "continuous"}
    # The engine recorded is the one the config chooses, not the one auto would pick.
    assert record["dtypes"] == {local: "bfloat16"}
    static = AloeConfig(backends={local: {"engine": "static", "dtype": "float16"}})
    chosen = run_defaults(static, [local], 8, concurrency_given=False)[2]
    assert chosen["engines"] == {local: "static"} and chosen["dtypes"] == {local: "float16"}
    assert record["weights"] == {local: "float"}
    assert run_defaults(AloeConfig(), [local], 8, concurrency_given=True)[1] == 8
    assert run_defaults(AloeConfig(), [local, "openai:gpt-4o-mini"], 8, concurrency_given=False)[1] == 8
    config, conversations, record = run_defaults(AloeConfig(), ["openai:gpt-4o-mini"], 8, False)
    assert (config, conversations, record) == (AloeConfig(), 8, None)


def test_the_embedded_model_records_packed_weights_on_cpu(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(hardware, "detect", lambda: CPU)
    monkeypatch.setattr(local_backend, "packed_kernels_missing", lambda: None)
    assert run_defaults(AloeConfig(), ["local:smollm2"], 8, False)[2]["weights"] == {"local:smollm2": "packed"}
    # the compiled int8 dot kernel for both, or torch's int4 kernel and (AMX: bfloat16) the tiles or int8
    for missing, tiles, q4_1, q8_0 in ((None, True, "int8 dot", "int8 dot"), ("no cc", False, "int4", "int8"),
                                       ("no cc", True, "int4", "bfloat16 tiles")):  # fmt: skip
        monkeypatch.setattr(local_backend, "int8_dot_missing", lambda missing=missing: missing)
        monkeypatch.setattr(local_backend, "cpu_has_bfloat16_tiles", lambda tiles=tiles: tiles)
        record = run_defaults(AloeConfig(), ["local:smollm2"], 8, False)[2]
        assert record["q4_1_matmuls"] == {"local:smollm2": q4_1} and record["q8_0_matmuls"] == {"local:smollm2": q8_0}
    folder = f"hf:{tiny_model_dir}"  # a transformers folder has no GGUF blocks to decode with
    assert run_defaults(AloeConfig(), [folder], 8, False)[2]["weights"] == {folder: "float"}
    chosen = AloeConfig(backend={"weights": "float"})
    assert run_defaults(chosen, ["local:smollm2"], 8, False)[2]["weights"] == {"local:smollm2": "float"}
    assert run_defaults(chosen, ["local:smollm2"], 8, False)[2]["q8_0_matmuls"] == {}
    assert run_defaults(chosen, ["local:smollm2"], 8, False)[2]["q4_1_matmuls"] == {}
    monkeypatch.setattr(hardware, "detect", lambda: GPU)
    assert run_defaults(AloeConfig(), ["local:smollm2"], 8, False)[2]["weights"] == {"local:smollm2": "float"}


def test_the_run_config_records_what_a_model_loaded_with(monkeypatch, tiny_model_dir, tmp_path):
    from aloekit.agents.backends import BackendPool
    from aloekit.cli.app import record_loaded_settings
    from aloekit.store import Store

    def unreadable(model, gguf, folder):
        raise OSError(f"{gguf}: not a GGUF file")

    monkeypatch.setattr(hardware, "detect", lambda: CPU)
    monkeypatch.setattr(local_backend, "cpu_has_bfloat16_tiles", lambda: False)  # as CPU says: float32
    monkeypatch.setattr(local_backend, "packed_kernels_missing", lambda: None)
    monkeypatch.setattr(local_backend, "int8_dot_missing", lambda: None)
    monkeypatch.setattr(local_backend, "cached_gguf_blocks", unreadable)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the server's client is built, never called
    fell_back, unloaded, server = "local:fell-back", "local:unloaded", "openai:gpt-4o-mini"
    clients = {spec: TransformersChatClient(tiny_model_dir, device="cpu", gguf=tmp_path / "x.gguf")
               for spec in (fell_back, unloaded)}  # fmt: skip
    clients[fell_back].load()  # its blocks cannot be read: it decodes in float under weights = "auto"
    predicted = {"engines": {s: "static" for s in clients}, "dtypes": {s: "float32" for s in clients},
                 "weights": {s: "packed" for s in clients}, "q8_0_matmuls": {s: "int8" for s in clients},
                 "q4_1_matmuls": {s: "int8 dot" for s in clients}}  # fmt: skip
    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("aloe simulate", {"hardware": {**CPU.record(), **predicted}})
    pool = BackendPool(AloeConfig())
    monkeypatch.setattr(pool, "inner", lambda spec: clients.get(spec) or BackendPool.inner(pool, spec))
    record_loaded_settings(store, run_id, pool, [fell_back, unloaded, server])
    recorded = json.loads(store.get_run(run_id)["config"])["hardware"]
    assert recorded["weights"] == {fell_back: "float", unloaded: "packed"}  # an unloaded model keeps the prediction
    assert recorded["q8_0_matmuls"] == {unloaded: "int8"}  # float weights have no Q8_0 matmul
    assert recorded["q4_1_matmuls"] == {unloaded: "int8 dot"}  # nor a Q4_1 one
    assert recorded["engines"] == predicted["engines"] and recorded["dtypes"] == predicted["dtypes"]
    assert recorded["device"] == "cpu"
    nothing_in_process = store.start_run("aloe simulate", {"hardware": None})
    record_loaded_settings(store, nothing_in_process, pool, [server])
    assert json.loads(store.get_run(nothing_in_process)["config"])["hardware"] is None


def test_detect_on_this_machine():
    detected = hardware.detect()
    if detected.device == "cpu":
        tiles = local_backend.cpu_has_bfloat16_tiles()
        assert detected.in_flight is None and detected.conversations is None
        assert detected.dtype == ("bfloat16" if tiles else "float32")
    else:  # a CUDA machine
        assert 16 <= detected.in_flight <= 256 and detected.dtype == "bfloat16"


@pytest.mark.parametrize("tiles", [False, True])
async def test_an_in_process_model_loads_as_the_dtype_asked(tiny_model_dir, monkeypatch, tiles):
    monkeypatch.setattr(local_backend, "cpu_has_bfloat16_tiles", lambda: tiles)
    chat = from_dicts([{"role": "user", "content": "hello"}])
    default = TransformersChatClient(tiny_model_dir, device="cpu")
    half = TransformersChatClient(tiny_model_dir, device="cpu", dtype="bfloat16")
    for client in (default, half):
        reply = await client.create(chat, extra_create_args={"max_tokens": 3})
        assert reply.usage.completion_tokens > 0
    auto = torch.bfloat16 if tiles else torch.float32  # on CPU: bfloat16 where AMX tiles multiply it
    assert default.dtype == str(auto).removeprefix("torch.") and default.model.dtype == auto
    assert half.dtype == "bfloat16" and half.model.dtype == torch.bfloat16


def test_auto_is_bfloat16_on_cuda_and_on_cpus_with_bfloat16_tiles(monkeypatch):
    for tiles, on_cpu in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(local_backend, "cpu_has_bfloat16_tiles", lambda tiles=tiles: tiles)
        assert local_backend.resolve_dtype("auto", "cpu") == on_cpu
        assert local_backend.resolve_dtype("auto", "cuda") == "bfloat16"
        assert local_backend.resolve_dtype("float32", "cpu") == "float32"
        assert local_backend.resolve_dtype("auto", "mps") == "float32"  # the tiles are a CPU's


def test_cast_parameters_loads_as_from_pretrained_does(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cast = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    local_backend.cast_parameters(cast, torch.bfloat16)
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)

    def same(tensors, others) -> bool:
        return all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(tensors, others, strict=True))

    assert same(cast.parameters(), loaded.parameters())
    # buffers stay as loaded: the rotary embedding's float32 frequencies, not rounded to bfloat16
    assert same(cast.buffers(), loaded.buffers())
    assert cast.model.rotary_emb.inv_freq.dtype == torch.float32 and cast.config.dtype == loaded.config.dtype


def test_a_bad_dtype_is_a_config_error():
    with pytest.raises(ValidationError, match="dtype"):
        AloeConfig(backend={"dtype": "int4"})
