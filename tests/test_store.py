import json
import sqlite3
import subprocess
import sys

import pytest

from aloekit.errors import StoreError
from aloekit.store import SCHEMA_VERSION, Store, cache_key

WRITER = """
import sys
from aloekit.store import Store
store = Store(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.log_call({"run_id": sys.argv[2], "role": "r", "spec": "s", "cache_key": str(i), "cacheable": 0,
                    "messages": [{"role": "user", "content": f"the same question {i % 3}"}], "options": "{}",
                    "response": f"an answer from {sys.argv[2]}", "status": "ok"})
"""


def test_fresh_database_is_migrated_once(tmp_path):
    path = tmp_path / "aloe.db"
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert {"runs", "llm_calls"} <= set(store.db.table_names())
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    assert Store(path).schema_version == SCHEMA_VERSION  # reopening is a no-op


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "aloe.db"
    Store(path).conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this aloekit"):
        Store(path)


def test_another_programs_database_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"an SQLite database but not an aloekit one \(it holds 'notes'"):
        Store(path)
    assert path.read_bytes() == before


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "no" / "aloe.db")


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "aloe.db"
    Store(path).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "300"], stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = Store(path)
    counts = dict(store.conn.execute("SELECT run_id, COUNT(*) FROM llm_calls GROUP BY run_id").fetchall())
    assert counts == {"a": 300, "b": 300}
    # Both wrote the same three questions: each stored once, whichever process came first.
    bodies = [body for (body,) in store.conn.execute("SELECT body FROM texts")]
    assert len(bodies) == len(set(bodies)) == 3 + 3 + 2  # questions, their prompts, the two answers
    questions = {c["messages"][0]["content"] for c in store.calls(run_id="b")}
    assert questions == {f"the same question {i}" for i in range(3)}


def test_run_lifecycle_records_config_versions_and_status(tmp_path):
    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("aloe chat x", {"seed": 3, "db": "aloe.db"}, seed=3)
    run = store.get_run(run_id)
    assert run["status"] == "running" and json.loads(run["config"])["seed"] == 3
    assert "transformers" in json.loads(run["versions"])
    store.finish_run(run_id, "failed", "boom")
    run = store.get_run(run_id)
    assert (run["status"], run["error"]) == ("failed", "boom") and run["ended_at"]
    assert [r["id"] for r in store.list_runs()] == [run_id]


def test_a_run_s_config_and_recorded_files_are_read_whatever_the_row_holds(tmp_path):
    from aloekit.hardware import recorded_files

    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("aloe simulate", {"hardware": {"files": {"local:smollm2": "ab" * 8}}})
    assert store.run_config(run_id)["hardware"]["files"] == {"local:smollm2": "ab" * 8}
    assert recorded_files(store.run_config(run_id)) == {"local:smollm2": "ab" * 8}
    assert store.run_config("nope") == {}
    for damaged in ("{not json", "[1, 2]", "null"):  # a damaged row: the commands needing a field say so
        store.update("runs", run_id, {"config": damaged})
        assert store.run_config(run_id) == {}
    for config in ({"hardware": None}, {"hardware": "cpu"}, {"hardware": {"files": ["x"]}},
                   {"hardware": {"files": {"a": 1, "b": "cd" * 8}}}):  # fmt: skip
        assert recorded_files(config) == ({"b": "cd" * 8} if "b" in str(config) else {})


def test_transaction_rolls_back_on_error(tmp_path):
    store = Store(tmp_path / "aloe.db")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.start_run("aloe x", {})
            raise RuntimeError
    assert store.list_runs() == []


def test_cache_key_depends_on_every_part():
    base = cache_key("a:b", [{"role": "user", "content": "hi"}], {"temperature": 0})
    assert base == cache_key("a:b", [{"role": "user", "content": "hi"}], {"temperature": 0})
    assert base != cache_key("a:c", [{"role": "user", "content": "hi"}], {"temperature": 0})
    assert base != cache_key("a:b", [{"role": "user", "content": "ho"}], {"temperature": 0})
    assert base != cache_key("a:b", [{"role": "user", "content": "hi"}], {"temperature": 0, "seed": 1})
