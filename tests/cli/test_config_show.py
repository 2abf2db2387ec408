"""Config semantics: role tables merge over their defaults, `aloe config show` names each value's source,
plugins resolve next to the config file."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from aloekit.agents.backends import registry
from aloekit.cli import cli
from aloekit.evaluation import EvalConfig
from aloekit.graphs import SimulationConfig


def test_a_restated_role_table_keeps_the_defaults_it_does_not_set():
    config = SimulationConfig.resolve({"inducer": {"kind": "inducer", "backend": "openai:x"},
                                       "responders": [{"name": "a", "use_hint": True}, {"name": "b"}]})  # fmt: skip
    default = SimulationConfig()
    assert config.inducer.backend == "openai:x" and config.inducer.generation == default.inducer.generation
    assert [r.generation for r in config.responders] == [default.responders[0].generation] * 2
    assert config.responders[1].kind == "responder" and not config.responders[1].use_hint
    judge = EvalConfig.resolve({"judge": {"backend": "openai:j"}}, {"model": "m"}).judge
    assert judge.kind == "alignment_scorer" and judge.generation.max_tokens == 8


def test_config_show_names_where_each_value_came_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    toml = '[simulation.judge]\nbackend = "openai:gpt-4o-mini"\n[backend]\ntimeout_s = 60\n'
    (tmp_path / "aloe.toml").write_text(toml)
    monkeypatch.setenv("ALOE_BACKEND__MAX_RETRIES", "5")
    result = CliRunner().invoke(cli, ["--json", "--config", "aloe.toml", "--seed", "3", "config", "show", "simulate"])
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["backend.timeout_s"] == {"value": 60.0, "source": "file aloe.toml"}
    assert shown["backend.max_retries"] == {"value": 5, "source": "environment variable ALOE_BACKEND__MAX_RETRIES"}
    assert shown["seed"] == {"value": 3, "source": "flag --seed"}
    assert shown["simulation.seed"] == {"value": 3, "source": "flag --seed"}
    assert shown["simulation.judge.backend"]["source"] == "file aloe.toml"
    assert shown["simulation.judge.generation.max_tokens"] == {"value": 12, "source": "default"}
    assert "evaluation.judge.kind" not in shown
    text = CliRunner().invoke(cli, ["--config", "aloe.toml", "config", "show", "eval"]).stdout
    assert 'evaluation.judge.kind = "alignment_scorer"' in text and "# default" in text


def test_plugins_in_a_config_file_resolve_next_to_it(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "aloe_plugin_next_to_config.py").write_text(
        "from aloekit.agents.backends import register_backend\n"
        "register_backend('nextdoor', description='from a plugin')(lambda spec, settings: None)\n"
    )
    # An override for the plugin's prefix is checked only once the plugin has registered it.
    (project / "aloe.toml").write_text(
        'plugins = ["aloe_plugin_next_to_config"]\n[backends."nextdoor:x"]\ntimeout_s = 5\n'
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: the plugin is found through the config file's folder
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    monkeypatch.delitem(sys.modules, "aloe_plugin_next_to_config", raising=False)
    try:
        result = CliRunner().invoke(cli, ["--json", "--config", "project/aloe.toml", "backends", "list"])
    finally:  # other tests list the registered prefixes: leave none behind
        registry._REGISTRY.pop("nextdoor", None)
    assert result.exit_code == 0, result.stderr
    assert "nextdoor" in {row["prefix"] for row in json.loads(result.stdout)}


def test_the_readme_letters_tip_works_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "aloe.toml").write_text('[simulation.judge]\noptions = { labels = "letters" }\n')
    result = CliRunner().invoke(cli, ["--json", "--config", "aloe.toml", "config", "show", "simulate"])
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["simulation.judge.kind"] == {"value": "preference_judge", "source": "default"}
    assert shown["simulation.judge.options.labels"] == {"value": "letters", "source": "file aloe.toml"}


@pytest.mark.parametrize("from_file", [True, False], ids=["file", "environment"])
def test_an_override_for_an_unknown_backend_names_where_it_was_set(tmp_path, monkeypatch, from_file):
    monkeypatch.chdir(tmp_path)
    if from_file:
        (tmp_path / "aloe.toml").write_text('[backends."locl:smollm2"]\ntimeout_s = 5\n')
        args, where = ["--config", "aloe.toml"], "aloe.toml"
    else:
        monkeypatch.setenv("ALOE_BACKENDS__LOCL:SMOLLM2__TIMEOUT_S", "5")
        args, where = [], "environment variable ALOE_BACKENDS__LOCL:SMOLLM2__TIMEOUT_S"
    result = CliRunner().invoke(cli, [*args, "runs", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {where}: backends['locl:smollm2']: unknown backend prefix 'locl' (known: ")
    assert result.stderr.count("\n") == 1
