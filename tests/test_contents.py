"""Texts, prompts and calls stored once: sharing, round trips, the migration of older databases, and gc."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from aloekit.cli import cli
from aloekit.errors import StoreError
from aloekit.graphs import TreeStore
from aloekit.store import MIGRATIONS, Store
from aloekit.testing import StubOpenAIServer, role_aware_reply

SYSTEM = "You are playing a real person chatting with an AI assistant. " * 3


def history(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    for t in range(turns):
        messages += [
            {"role": "user", "content": f"message {t} " * 10},
            {"role": "assistant", "content": f"reply {t} " * 10},
        ]
    return messages


def test_a_resent_history_is_stored_once_and_reads_back_exactly(tmp_path):
    store = Store(tmp_path / "aloe.db")
    contents = store.contents
    prompts = [contents.prompt_id(history(t)) for t in range(1, 6)]
    assert len(set(prompts)) == 5 and contents.messages(prompts[-1]) == history(5)
    bodies = [b for (b,) in store.conn.execute("SELECT body FROM texts")]
    assert len(bodies) == len(set(bodies)) == 1 + 5 * 2 + 5  # the system prompt, ten messages, five prompts
    assert sum("message 0" in b for b in bodies) == 1  # the first message, resent five times, is one row

    call = {"backend": "x", "messages": history(2), "raw": "reply 1 " * 10, "prompt_tokens": 3}
    record = {"turn": 2, "user_message": "message 1 " * 10, "user_calls": [call], "short": "kept inline",
              "score": {"mode": "expected", "score": 2.5}}  # fmt: skip
    node = {"hint": None, "calls": [call]}
    packed_record, packed_node = contents.dumps(record), contents.dumps(node)
    assert contents.loads(packed_record) == record and contents.loads(packed_node) == node
    assert json.loads(packed_node)["calls"] == json.loads(packed_record)["user_calls"]  # one call row, two references
    assert "kept inline" in packed_record and "message 1" not in packed_record
    # Small fields stay readable in SQL.
    mode = store.conn.execute("SELECT json_extract(?, '$.score.mode')", [packed_record]).fetchone()[0]
    assert mode == "expected"


def chat_so_far(turns: int) -> str:
    """An inducer-style prompt: the whole chat rendered into one message, a line per message."""
    lines = [f"User: message {t} " * 6 + "\nFriend: " + f"reply {t} " * 8 for t in range(turns)]
    return "The chat so far:\n" + "\n".join(lines) + "\n\nWhat has the user revealed?\n"


def test_a_prompt_restating_the_chat_adds_only_its_new_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123")
    store = Store(tmp_path / "aloe.db")
    contents = store.contents
    ids = [contents.text_id(chat_so_far(t)) for t in range(4, 12)]
    rows = store.conn.execute("SELECT COUNT(*), SUM(LENGTH(body)) FROM texts").fetchone()
    more = contents.text_id(chat_so_far(12))
    added = store.conn.execute("SELECT COUNT(*), SUM(LENGTH(body)) FROM texts").fetchone()
    assert added[0] - rows[0] == 3  # the new user line, the new reply line, the prompt itself
    assert added[1] - rows[1] < len(chat_so_far(12)) - len(chat_so_far(11)) + 200  # not the whole prompt again
    assert contents.text_id(chat_so_far(12)) == more  # found again, whole
    leaked = chat_so_far(5).replace("message 2 ", "key sk-secret-value-123 ", 1)
    odd = ["\n" * 600, "x" * 700, "ends without a newline " * 30 + "\n" + "y" * 70, "\r\n".join(["z" * 80] * 9)]
    written = {contents.text_id(t): t for t in [*odd, leaked]}

    fresh = Store(tmp_path / "aloe.db").contents  # nothing remembered: every body is rebuilt from its lines
    assert fresh.texts(ids + [more]) == {i: chat_so_far(t) for i, t in zip(ids + [more], range(4, 13), strict=True)}
    assert {i: fresh.text(i) for i in written} == {
        i: t.replace("sk-secret-value-123", "***") for i, t in written.items()
    }
    assert not store.conn.execute("SELECT COUNT(*) FROM texts WHERE body LIKE '%sk-secret%'").fetchone()[0]


def test_documents_that_look_like_references_read_back_as_themselves(tmp_path):
    contents = Store(tmp_path / "aloe.db").contents
    odd = (
        {"$text": 5},
        {"$text": True},
        {"$call": 1, "other": 2},
        {"$literal": {"$prompt": 3}},
        {"messages": [{"text": "not a chat message"}]},
        {"messages": [{"role": "user", "content": ["x"]}]},
    )
    for value in odd:
        assert contents.loads(contents.dumps(value)) == value, value


def test_gc_keeps_what_only_the_call_log_references(tmp_path):
    """A chat, an audit or a persona generation leaves calls and no turn record: their texts stay."""
    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("aloe chat", {})
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "what should I cook tonight? " * 3}]
    store.log_call({"run_id": run_id, "role": "chat", "spec": "s", "cache_key": "k", "cacheable": 1, "messages": prompt,
                    "options": "{}", "response": "a risotto, slowly stirred " * 4, "status": "ok"})  # fmt: skip
    assert store.collect_garbage()["texts_removed"] == 0
    assert store.calls(run_id)[0]["messages"] == prompt and store.cached_response("k")["response"].startswith(
        "a risotto"
    )


def test_a_run_whose_judge_audit_another_run_relies_on_is_not_deleted(tmp_path):
    store = Store(tmp_path / "aloe.db")
    audit_run = store.start_run("aloe judge audit", {})
    store.insert("judge_audits", {"id": "audit-1", "run_id": audit_run, "judge_key": "k", "stage": "eval", "judge": "j",
                                  "passed": 1, "result": "{}", "created_at": "t"})  # fmt: skip
    eval_run = store.start_run("aloe eval", {"judge_audit": "audit-1"})
    with pytest.raises(StoreError, match=f"holds judge audit audit-1, which run {eval_run} relies on"):
        store.delete_run(audit_run)
    store.delete_run(eval_run)
    store.delete_run(audit_run)
    assert store.list_runs() == [] and not list(store.db["judge_audits"].rows)


def test_a_collision_of_the_short_hash_keeps_both_texts(tmp_path, monkeypatch):
    store = Store(tmp_path / "aloe.db")
    monkeypatch.setattr("aloekit.contents.content_hash", lambda body: 7)
    a, b = store.contents.text_id("first"), store.contents.text_id("second")
    store.contents.forget()
    assert a != b and store.contents.texts([a, b]) == {a: "first", b: "second"}
    assert store.contents.text_id("second") == b


def test_a_rolled_back_turn_takes_its_new_texts_with_it(tmp_path):
    store = Store(tmp_path / "aloe.db")
    try:
        with store.transaction():
            store.contents.text_id("only in the failed turn " * 4)
            raise RuntimeError
    except RuntimeError:
        pass
    again = store.contents.text_id("only in the failed turn " * 4)  # not served from the process's memory
    stored = store.conn.execute("SELECT body FROM texts WHERE id = ?", [again]).fetchone()
    assert stored == ("only in the failed turn " * 4,)


def stored_view(store: Store, run_id: str) -> dict:
    """Everything a reader sees of a run: turn records, trees, the call log."""
    trees = TreeStore(store)
    ids = [c.id for c in trees.conversations(run_id)]
    calls = [{k: v for k, v in c.items() if k not in ("prompt_id", "response_id")} for c in store.calls(run_id)]
    return {
        "records": [r.model_dump() for cid in ids for r in trees.records(cid)],
        "trees": [sorted(trees.tree(cid).graph.nodes(data=True)) for cid in ids],
        "calls": calls,
    }


def simulate(db, conversations: int, turns: int, seed: int) -> tuple[Store, str]:
    """A simulated run against the role-aware stub server, through the CLI."""
    with StubOpenAIServer(respond=role_aware_reply) as server:
        args = ["--db", str(db), "--json", "simulate", "--conversations", str(conversations), "--turns", str(turns),
                "--seed", str(seed), "--role", f"all={server.spec()}"]  # fmt: skip
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return Store(db), json.loads(result.stdout)["run_id"]


def test_a_schema_6_database_migrates_and_reads_the_same(tmp_path):
    store, run_id = simulate(tmp_path / "new.db", 2, 3, seed=5)
    expected = stored_view(store, run_id)

    # The same run as aloekit 0.x stored it: every prompt inline, three times over.
    old = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    for step in MIGRATIONS[:6]:
        step(old)
    old.execute("PRAGMA user_version = 6")
    for table in ("runs", "personas", "persona_pairs", "conversations"):
        rows = store.conn.execute(f"SELECT * FROM {table}").fetchall()
        for row in rows:
            old.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(row))})", row)
    for cid in {r["conversation_id"] for r in expected["records"]}:
        for record in TreeStore(store).records(cid):
            old.execute("INSERT INTO turns VALUES (?, ?, ?, ?)", [cid, record.turn, record.model_dump_json(), "t"])
        graph = TreeStore(store).tree(cid).graph  # every node with its calls, as schema 6 stored a simulation's
        for node, a in graph.nodes(data=True):
            parent = next(iter(graph.predecessors(node)), None)
            old.execute("INSERT INTO tree_nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [node, cid, parent, a["turn"],
                        a["role"], a["text"], a["label"], int(a["chosen"]), json.dumps(a["data"])])  # fmt: skip
    for call in store.calls():
        call["messages"] = json.dumps(call["messages"])
        del call["prompt_id"], call["response_id"]
        old.execute(
            f"INSERT INTO llm_calls ({','.join(call)}) VALUES ({','.join('?' * len(call))})", list(call.values())
        )
    old.close()
    old_size = (tmp_path / "old.db").stat().st_size

    migrated = Store(tmp_path / "old.db")
    assert migrated.schema_version == len(MIGRATIONS)
    assert stored_view(migrated, run_id) == expected
    # Migration 8: a simulation's tree is built from its records; the node rows that copied them are gone.
    assert migrated.conn.execute("SELECT COUNT(*) FROM tree_nodes").fetchone()[0] == 0
    migrated.conn.execute("VACUUM")
    migrated.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert (tmp_path / "old.db").stat().st_size < old_size


def test_runs_delete_then_gc_frees_only_what_no_run_references(tmp_path, monkeypatch):
    db = tmp_path / "aloe.db"
    monkeypatch.setenv("ALOE_DB", str(db))  # for the commands below
    store, first = simulate(db, 2, 2, seed=1)
    _, second = simulate(db, 2, 2, seed=2)
    kept = stored_view(Store(db), second)
    texts_before = store.conn.execute("SELECT COUNT(*) FROM texts").fetchone()[0]

    runner = CliRunner()
    result = runner.invoke(cli, ["runs", "delete", first, "no-such-run"])
    assert result.exit_code != 0 and "no run 'no-such-run'" in result.output and Store(db).get_run(first)
    assert runner.invoke(cli, ["runs", "delete", first]).exit_code == 0
    result = runner.invoke(cli, ["--json", "runs", "gc"])
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)
    after = Store(db)
    texts_after = after.conn.execute("SELECT COUNT(*) FROM texts").fetchone()[0]
    assert removed["texts_removed"] == texts_before - texts_after > 0
    assert after.get_run(first) is None and not after.calls(first) and not TreeStore(after).conversations(first)
    assert stored_view(after, second) == kept  # the other run reads exactly as before
    assert json.loads(runner.invoke(cli, ["--json", "runs", "gc"]).stdout)["texts_removed"] == 0


def test_migration_8_keeps_evaluation_nodes_and_drops_the_copies_of_simulation_records(tmp_path):
    old = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    for step in MIGRATIONS[:7]:
        step(old)
    old.execute("PRAGMA user_version = 7")
    old.execute("INSERT INTO runs (id, command, config, versions, started_at, status) VALUES ('r', 'x', '{}', '{}', "
                "'t', 'complete')")  # fmt: skip
    for cid, kind in (("sim", "simulation"), ("roll", "rollout"), ("ev", "evaluation")):
        old.execute("INSERT INTO conversations (id, run_id, kind, position, persona, max_turns, status, created_at, "
                    "updated_at) VALUES (?, 'r', ?, 0, '{}', 1, 'complete', 't', 't')", [cid, kind])  # fmt: skip
        old.execute("INSERT INTO tree_nodes (id, conversation_id, turn, role, text, data) VALUES (?, ?, 0, 'persona', "
                    "'p', '{}')", [f"{cid}/root", cid])  # fmt: skip
    old.close()
    migrated = Store(tmp_path / "old.db")
    assert [r for (r,) in migrated.conn.execute("SELECT id FROM tree_nodes")] == ["ev/root"]


def test_gc_keeps_the_lines_of_kept_texts_and_drops_those_only_deleted_texts_used(tmp_path):
    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("simulate", {}, 0)
    kept, dropped = chat_so_far(8), chat_so_far(8).replace("reply 7 ", "other 7 ")
    store.log_call({"run_id": run_id, "role": "inducer", "spec": "x", "cache_key": "k", "cacheable": 0,
                    "messages": [{"role": "user", "content": kept}], "options": "{}", "status": "ok",
                    "response": "None"})  # fmt: skip
    store.contents.text_id(dropped)  # referenced by nothing
    store.finish_run(run_id)
    removed = store.collect_garbage()
    assert removed["texts_removed"] == 2  # the unreferenced prompt and its one line of its own
    fresh = Store(tmp_path / "aloe.db")
    assert fresh.calls(run_id)[0]["messages"] == [{"role": "user", "content": kept}]
