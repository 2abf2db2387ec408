"""`aloe runs list` never cuts a run id; `aloe backends list` names who registered each backend."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from aloekit.agents.backends import list_backends, registry
from aloekit.agents.backends.registry import register_backend
from aloekit.cli import cli
from aloekit.cli import runs as runs_module
from aloekit.store import Store

LONG_COMMAND = "aloe simulate --conversations 200 --turns 6 --role all=openai:http://127.0.0.1:8000/v1#Qwen2.5-7B"


@pytest.fixture
def db(tmp_path, monkeypatch):
    """Ids of a few runs, one with a long command, in a database that ALOE_DB points at."""
    path = tmp_path / "aloe.db"
    store = Store(path)
    ids = [store.start_run(LONG_COMMAND if i == 0 else "aloe eval --model local:smollm2", {}, 0) for i in range(3)]
    store.finish_run(ids[1], "failed", error="every conversation failed")
    store.close()
    monkeypatch.setenv("ALOE_DB", str(path))
    return ids


def _table_width() -> int:
    store = Store(Path(os.environ["ALOE_DB"]), readonly=True)
    try:
        return runs_module.table_width([runs_module.run_cells(r) for r in store.list_runs(20)])
    finally:
        store.close()


@pytest.mark.parametrize("columns", ["80", "40"])
def test_runs_list_off_a_terminal_prints_whole_ids(db, columns):
    result = CliRunner().invoke(cli, ["runs", "list"], env={"COLUMNS": columns}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "status", "started", "calls", "tokens", "command"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(db)  # each id whole, at the start of its line
    assert any(line.endswith(LONG_COMMAND) for line in lines)  # nothing cut at the other end either
    assert "\u2026" not in result.stdout


def test_runs_list_on_a_terminal_keeps_ids_whole_at_any_width(db, monkeypatch):
    monkeypatch.setattr(runs_module, "_on_terminal", lambda: True)
    needed = _table_width()
    for columns in (needed + 40, needed, needed - 1, 80, 50):
        result = CliRunner().invoke(cli, ["runs", "list"], env={"COLUMNS": str(columns)}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        table = "\u2503 id " in result.stdout
        assert table == (columns >= needed), columns  # a table only where it fits with the command folded
        if table:
            assert all(len(line) <= columns for line in result.stdout.splitlines())
            assert all(any(f"\u2502 {run_id} \u2502" in line for line in result.stdout.splitlines()) for run_id in db)
        else:
            assert sorted(line.split()[0] for line in result.stdout.splitlines()[1:]) == sorted(db)
        assert "\u2026" not in result.stdout  # no column was cut short with an ellipsis


def _example_factory(spec, settings):  # registered from this test module, the way a plugin would
    raise NotImplementedError


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_backend("viewtest", description="a backend from a test module", example="viewtest:x")(_example_factory)


def test_backends_list_names_the_registering_package(registered):
    by_prefix = {b.prefix: b.source for b in list_backends()}
    assert by_prefix["viewtest"] == "tests"  # this module's top-level package, not "builtin"
    assert by_prefix["scripted"] == "tests"  # tests/conftest.py registers it
    assert by_prefix["openai"] == by_prefix["local"] == "builtin"
    result = CliRunner().invoke(cli, ["--json", "backends", "list"], catch_exceptions=False)
    rows = {r["prefix"]: r for r in json.loads(result.stdout)}
    assert rows["viewtest"]["source"] == "tests" and rows["replay"]["source"] == "builtin"


def test_entry_point_backends_name_their_distribution(monkeypatch):
    dist = metadata.distribution("aloekit")
    plugin = metadata.EntryPoint(name="epview", value="tests.viewer.test_listings:_example_factory",
                                 group="aloekit.backends")._for(dist)  # fmt: skip
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [plugin])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert {b.prefix: b.source for b in list_backends()}["epview"] == "plugin aloekit"
