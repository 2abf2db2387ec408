import pytest
from pydantic import ValidationError

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
        ("c.yaml", "a: [1,\nb: 2\n", r"c.yaml: invalid YAML: line \d"),
        ("c.toml", "sed = 1\n", r"c.toml: field sed: Extra inputs are not permitted"),
        ("c.toml", "[backend]\ntimeout_s = 'slow'\n", r"field backend.timeout_s"),
        ("c.yaml", "backends:\n  local:smollm2: {bogus: 1}\n", r"backends\['local:smollm2'\]: field bogus"),
        ("c.toml", "[generation]\nseed = 18446744073709551616\n", r"field generation.seed: .*less than or equal"),
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


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    return message


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("bytes.toml", b"seed = 1\n\xff\xfe = 2\n", r"bytes.toml: line 2: not UTF-8 text \(byte 0xff at column 1\)"),
        ("bytes.yaml", b"seed: \xc3\x28\n", r"bytes.yaml: line 1: not UTF-8 text \(byte 0xc3 at column 7\)"),
        ("bad.toml", b"seed = 1\n[backend\n", r"bad.toml: invalid TOML: .*\(at line 2, column \d+\)"),
        ("bad.yaml", b"seed: 1\nbackend:\n\ttimeout_s: 2\n", r"bad.yaml: invalid YAML: line 3: .*found character"),
        ("two.yaml", b"seed: 1\n---\nseed: 2\n", r"two.yaml: .*YAML: line 2: expected a single document.*another"),
        ("ctrl.yaml", b"seed: 1\ndb: \x07\n", r"ctrl.yaml: invalid YAML: line 2: special characters are not allowed"),
        ("deep.yaml", b"a: " + b"[" * 100_000, "deep.yaml: nested too deeply to read"),
        ("deep2.yaml", b"a: " + b"[" * 5000 + b"]" * 5000, "deep2.yaml: nested too deeply to read"),
        ("deep.toml", b"a = " + b"[" * 100_000, "deep.toml: nested too deeply to read"),
        ("deep2.toml", b"a = " + b"[" * 5000 + b"]" * 5000, "deep2.toml: nested too deeply to read"),
        ("list.toml", b"plugins = 'x'\n", r"list.toml: field plugins: Input should be a valid list"),
        ("gen.yaml", b"generation: 3\n", r"gen.yaml: field generation: Input should be a valid dictionary"),
        ("extra.toml", b"[generation]\ntemprature = 0.5\n", "extra.toml: field generation.temprature: Extra inputs"),
        ("inf.toml", b"[backend]\ntimeout_s = inf\n", "inf.toml: field backend.timeout_s: Input should be a finite"),
        ("nan.toml", b"[generation]\ntemperature = nan\n", "nan.toml: field generation.temperature: Input should be"),
    ],
)
def test_unreadable_config_files_fail_in_one_line(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message) as excinfo:
        load_config(path, environ={})
    assert str(path) in one_line_error(excinfo)


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfseed = 4\n")
    assert load_config(path, environ={}).seed == 4


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["folder", "missing"])
def test_config_path_must_be_a_file(tmp_path, make):
    path = tmp_path / "c.toml"
    make(path)
    with pytest.raises(ConfigError, match=r"config file .*c.toml: (is a folder, not a file|not found)") as excinfo:
        load_config(path, environ={})
    one_line_error(excinfo)


@pytest.mark.parametrize(
    ("section", "field", "value", "problem"),
    [
        ("generation", "max_tokens", "0", "greater than 0"),
        ("generation", "temperature", "-0.1", "greater than or equal to 0"),
        ("generation", "top_p", "0", "greater than 0"),
        ("generation", "top_p", "1.5", "less than or equal to 1"),
        ("generation", "repetition_penalty", "0", "greater than 0"),
        ("backend", "timeout_s", "0", "greater than 0"),
        ("backend", "max_concurrency", "0", "greater than 0"),
        ("backend", "max_batch_size", "0", "greater than 0"),
        ("backend", "max_retries", "-1", "greater than or equal to 0"),
        ("backend", "backoff_base_s", "-1", "greater than or equal to 0"),
        ("backend", "guided_choice", "'maybe'", "Input should be 'auto'"),
    ],
)
def test_option_ranges_name_file_and_field(tmp_path, section, field, value, problem):
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{field} = {value}\n")
    with pytest.raises(ConfigError, match=f"c.toml: field {section}.{field}: .*{problem}") as excinfo:
        load_config(path, environ={})
    one_line_error(excinfo)


def test_per_backend_override_ranges(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backends:\n  local:smollm2: {timeout_s: -1}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: .*backends\['local:smollm2'\]: field timeout_s"):
        load_config(path, environ={})


def test_errors_name_the_layer_that_set_the_value(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[backend]\ntimeout_s = 5\n")
    env = {"ALOE_BACKEND__TIMEOUT_S": "-1"}
    with pytest.raises(ConfigError, match=r"^environment variable ALOE_BACKEND__TIMEOUT_S: field backend.timeout_s"):
        load_config(path, environ=env)
    with pytest.raises(ConfigError, match=r"^--seed: field seed"):
        load_config(path, overrides={"seed": "x"}, environ={})
    path.write_text("[backend]\ntimeout_s = -5\n")
    with pytest.raises(ConfigError, match=r"^config file .*c.toml: field backend.timeout_s"):
        load_config(path, environ={"ALOE_SEED": "3"})


def test_env_value_and_table_conflict():
    env = {"ALOE_BACKEND": "3", "ALOE_BACKEND__TIMEOUT_S": "9"}
    with pytest.raises(ConfigError, match="ALOE_BACKEND__TIMEOUT_S: ALOE_BACKEND is set to a value, not a table"):
        load_config(environ=env)
    deep = {"ALOE_SIMULATION": "[" * 100_000}  # not JSON as far as the decoder can go: kept as a string
    with pytest.raises(ConfigError, match="environment variable ALOE_SIMULATION: field simulation"):
        load_config(environ=deep)


def _all_settings() -> list[type]:
    """Every settings model users write, once their modules are imported."""
    import aloekit.evaluation.audit
    import aloekit.evaluation.task
    import aloekit.graphs.simulate
    import aloekit.personas.generate
    import aloekit.training.grpo
    import aloekit.training.train  # noqa: F401
    from aloekit.config import Settings

    found, todo = [], [Settings]
    while todo:
        found += (subclasses := todo.pop().__subclasses__())
        todo += subclasses
    return found


@pytest.mark.parametrize("model", _all_settings(), ids=lambda m: m.__name__)
def test_true_or_false_is_no_number(model):
    from aloekit.config import _types_in

    def problems(name):
        try:
            model.model_validate({name: True})
        except ValidationError as exc:  # other fields' errors (required ones missing) are not this test's
            return [e["msg"] for e in exc.errors() if e["loc"] == (name,)]
        return []

    fields = model.model_fields.items()
    numbers = [n for n, f in fields if _types_in(f.annotation) & {int, float}]
    for name in numbers:  # pydantic alone reads true as 1 and false as 0
        assert problems(name), f"{model.__name__}.{name} took true for a number"
    for name in [n for n, f in fields if _types_in(f.annotation) == {bool}]:
        assert problems(name) == [], f"{model.__name__}.{name} refused true"


@pytest.mark.parametrize(
    ("files", "env", "args", "message"),
    [
        (
            {"c.toml": "[simulation]\nconversations = -2\n"},
            {},
            ["--config", "c.toml", "simulate"],
            "error: config file c.toml: field simulation.conversations: Input should be greater than or equal to 1",
        ),
        (
            {},
            {"ALOE_SIMULATION__TURNS": "0"},
            ["config", "show", "simulate"],
            "error: environment variable ALOE_SIMULATION__TURNS: field simulation.turns: Input should be greater "
            "than or equal to 1",
        ),
        (
            {"e.toml": "[evaluation]\nturns = 2.5\n"},
            {},
            ["--config", "e.toml", "eval", "--model", "replay:x.json"],
            "error: config file e.toml: field evaluation.turns: Input should be a valid integer, got a number with a "
            "fractional part",
        ),
        # The stage's seed is passed on as a flag whatever its source: it is the file's unless --seed was typed.
        (
            {"s.toml": '[simulation]\nseed = "x"\n'},
            {},
            ["--config", "s.toml", "simulate"],
            "error: config file s.toml: field simulation.seed: Input should be a valid integer, unable to parse string "
            "as an integer",
        ),
        (
            {},
            {},
            ["simulate", "--paper-exact", "--judge-both-orders"],
            "error: simulation settings: Value error, paper_exact asks once, hinted reply first: it cannot be combined "
            "with judge_both_orders",
        ),
    ],
    ids=["file", "environment", "eval", "seed", "together"],
)
def test_a_bad_stage_setting_names_where_it_came_from(run_aloe, tmp_path, files, env, args, message):
    # The [simulation] and [evaluation] tables are checked when a command reads them; their errors said only
    # "simulation config" or the class name, while [backend]'s named the file or the variable.
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    proc = run_aloe(*args, env=env)
    assert proc.returncode == 1 and proc.stderr.strip() == message
