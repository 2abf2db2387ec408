import pytest

from aloekit.config import GenerationOptions, load_config
from aloekit.errors import ConfigError


def test_defaults():
    config = load_config(environ={})
    assert str(config.db) == "aloe.db" and config.backend.max_retries == 3


def test_toml_then_env_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("seed = 1\n[backend]\ntimeout_s = 9\nmax_concurrency = 4\n[generation]\nmax_tokens = 64\n")
    env = {"ALOE_SEED": "2", "ALOE_BACKEND__TIMEOUT_S": "11", "ALOE_SMOLLM2_GGUF": "/x.gguf"}
    config = load_config(path, overrides={"seed": 3, "db": None}, environ=env)
    assert config.seed == 3  # flag beats env beats file
    assert config.backend.timeout_s == 11 and config.backend.max_concurrency == 4
    assert config.generation.max_tokens == 64


def test_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backends:\n  openai:gpt-4o-mini:\n    max_concurrency: 32\n")
    assert load_config(path, environ={}).backend_settings("openai:gpt-4o-mini").max_concurrency == 32


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.toml", "seed = \n", r"c.toml: .*line 1"),
        ("c.yaml", "a: [1,\nb: 2\n", r"c.yaml: line \d"),
        ("c.toml", "sed = 1\n", r"c.toml: field sed: Extra inputs are not permitted"),
        ("c.toml", "[backend]\ntimeout_s = 'slow'\n", r"field backend.timeout_s"),
        ("c.yaml", "backends:\n  local:smollm2: {bogus: 1}\n", r"backends\['local:smollm2'\]: field bogus"),
        ("c.json", "{}", "unknown format '.json'"),
        ("c.yaml", "- 1\n", "top level must be a table"),
    ],
)
def test_malformed_config_names_file_and_problem(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.toml", environ={})


def test_generation_options_merge_and_determinism():
    base = GenerationOptions(temperature=0.7, max_tokens=10)
    merged = base.merged({"max_tokens": 20, "seed": 1})
    assert merged.as_create_args() == {"temperature": 0.7, "max_tokens": 20, "seed": 1}
    assert merged.deterministic and GenerationOptions(temperature=0).deterministic
    assert not base.deterministic
