"""Runs always end in a state: SIGTERM marks them interrupted and resumable, one writer per run, exit statuses."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aloekit.cli import cli
from aloekit.graphs import TreeStore
from aloekit.store import Store
from aloekit.testing import StubOpenAIServer, role_aware_reply
from tests.graphs.scripted import PERSONA
from tests.helpers import count_rows, hold_lease, wait_for

DEADLINE_S = 300  # generous: a loaded 2-core machine may take long to start a process


def aloe(tmp_path: Path, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Start the real CLI on the test's database."""
    full_env = {**os.environ, "ALOE_DB": str(tmp_path / "aloe.db"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "aloekit.cli", "-q", *args], env=full_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)  # fmt: skip


def query(tmp_path: Path, sql: str) -> list[tuple]:
    """Read the database without creating it; nothing when it or its tables do not exist yet."""
    try:
        with sqlite3.connect(f"file:{tmp_path / 'aloe.db'}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def saved(tmp_path: Path, table: str) -> int:
    return count_rows(tmp_path / "aloe.db", table)


def run_row(tmp_path: Path) -> tuple[str, str, str | None]:
    return query(tmp_path, "SELECT id, status, error FROM runs ORDER BY started_at DESC LIMIT 1")[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "stop", "status", "last_line"),
    [("simulate", signal.SIGTERM, 143, "terminated"), ("eval", signal.SIGTERM, 143, "terminated"),
     ("simulate", signal.SIGHUP, 129, "terminated (SIGHUP)")],  # SIGHUP: the terminal was closed
)  # fmt: skip
def test_sigterm_marks_the_run_interrupted_and_resume_finishes_it(tmp_path, command, stop, status, last_line):
    with StubOpenAIServer(respond=role_aware_reply, latency_s=0.1) as server:
        spec = server.spec()
        if command == "simulate":
            args, table = ["simulate", "--conversations", "4", "--turns", "3", "--concurrency", "2", "--role",
                           f"all={spec}"], "turns"  # fmt: skip
        else:
            args, table = ["eval", "--model", spec, "--role", f"user={spec}", "--role", f"judge={spec}",
                           "--personas", "4", "--turns", "3", "--concurrency", "2"], "eval_turns"  # fmt: skip
        # As started from a terminal, whatever this test runs under (nohup would pass SIGHUP on ignored).
        proc = aloe(tmp_path, *args, preexec_fn=lambda: signal.signal(stop, signal.SIG_DFL))
        wait_for(lambda: saved(tmp_path, table) > 0, "a turn was saved", proc)
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == status, err
        assert err.strip().splitlines()[-1] == last_line and "Traceback" not in err
        run_id, run_status, reason = run_row(tmp_path)
        assert (run_status, reason) == ("interrupted", signal.Signals(stop).name)
        assert not query(tmp_path, f"SELECT 1 FROM conversations WHERE run_id = '{run_id}' AND status = 'running'")
        assert not query(tmp_path, "SELECT 1 FROM run_leases")  # the lease was given back
        resumed = aloe(tmp_path, "--json", command, "--resume", run_id)
        out, err = resumed.communicate(timeout=DEADLINE_S)
        assert resumed.returncode == 0, err
        assert json.loads(out)["statuses"] == {"complete": 4}
        assert run_row(tmp_path)[1:] == ("completed", None)


@pytest.mark.slow
def test_a_sigkilled_run_is_listed_interrupted_with_why_and_resume_finishes_it(tmp_path):
    """SIGKILL (or running out of memory, or a full disk) gives the process no chance to end its run: the next
    `aloe runs list` finds its lease holder gone and records the run ``interrupted``, as the process would have."""
    with StubOpenAIServer(respond=role_aware_reply, latency_s=0.1) as server:
        proc = aloe(tmp_path, "simulate", "--conversations", "4", "--turns", "3", "--concurrency", "2", "--role",
                    f"all={server.spec()}")  # fmt: skip
        wait_for(lambda: saved(tmp_path, "turns") > 0, "a turn was saved", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)
        run_id, status, _ = run_row(tmp_path)
        assert status == "running" and query(tmp_path, "SELECT 1 FROM run_leases")  # as the process left them
        listed = aloe(tmp_path, "--json", "runs", "list")
        out, err = listed.communicate(timeout=DEADLINE_S)
        assert listed.returncode == 0, err
        (run,) = json.loads(out)
        assert run["status"] == "interrupted" and run["ended_at"]
        assert run["error"].startswith(f"its process ({proc.pid} on ") and "--resume continues it" in run["error"]
        assert not query(tmp_path, f"SELECT 1 FROM conversations WHERE run_id = '{run_id}' AND status = 'running'")
        assert query(tmp_path, "SELECT pid FROM run_leases") == [(proc.pid,)]  # a resume replaces it
        resumed = aloe(tmp_path, "--json", "simulate", "--resume", run_id)
        out, err = resumed.communicate(timeout=DEADLINE_S)
        assert resumed.returncode == 0, err
        assert json.loads(out)["statuses"] == {"complete": 4}
        assert run_row(tmp_path)[1:] == ("completed", None)


@pytest.mark.slow
def test_under_nohup_a_hangup_does_not_stop_the_run(tmp_path):
    # nohup starts the command with SIGHUP ignored, so that it outlives its terminal: aloekit keeps it so.
    with StubOpenAIServer(respond=role_aware_reply, latency_s=0.1) as server:
        proc = aloe(tmp_path, "simulate", "--conversations", "2", "--turns", "3", "--role", f"all={server.spec()}",
                    preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # fmt: skip
        wait_for(lambda: saved(tmp_path, "turns") > 0, "a turn was saved", proc)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    assert run_row(tmp_path)[1:] == ("completed", None)


@pytest.mark.slow
def test_two_resumes_of_one_run_one_wins_the_other_gets_a_clear_error(tmp_path):
    gate = threading.Event()  # holds the winner's calls until the loser has been turned away
    gate.set()

    def gated_reply(messages):
        gate.wait(DEADLINE_S)
        return role_aware_reply(messages)

    with StubOpenAIServer(respond=gated_reply) as server:
        first = aloe(tmp_path, "simulate", "--conversations", "3", "--turns", "2", "--role", f"all={server.spec()}",
                     "--budget-calls", "3")  # fmt: skip
        assert first.wait(timeout=DEADLINE_S) == 0, first.communicate()[1]
        run_id = run_row(tmp_path)[0]
        gate.clear()
        winner = aloe(tmp_path, "simulate", "--resume", run_id)
        wait_for(lambda: bool(query(tmp_path, "SELECT 1 FROM run_leases")), "the lease was taken", winner)
        loser = aloe(tmp_path, "simulate", "--resume", run_id)
        _, err = loser.communicate(timeout=DEADLINE_S)
        assert loser.returncode == 1
        assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()]
        assert f"run {run_id} is being worked on by process {winner.pid}" in err and "Traceback" not in err
        gate.set()
        _, err = winner.communicate(timeout=DEADLINE_S)
        assert winner.returncode == 0, err
    assert run_row(tmp_path)[1] == "completed"


def test_a_sigkilled_holder_does_not_block_a_resume(tmp_path):
    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("test", {}, 0)
    hold_lease(store, run_id)  # by a process that has ended
    from aloekit.store import RunLease

    with RunLease(store, run_id) as lease:  # the holder's pid is gone: taken over at once
        assert store.conn.execute("SELECT owner FROM run_leases").fetchone()[0] == lease.owner


@pytest.mark.parametrize(
    ("host", "pid", "silent_s", "abandoned"),
    [("here", "dead", 0, True), ("here", "mine", 0, False), ("here", "mine", 2, False),
     ("here", "mine", 10**6, True),  # a heartbeat from before this process started: the pid was reused
     ("elsewhere", 1, 0, False), ("elsewhere", 1, 2, True)],
)  # fmt: skip
def test_a_run_whose_lease_holder_is_gone_is_ended_interrupted(tmp_path, host, pid, silent_s, abandoned):
    """Gone: a pid that no longer exists on this host (or now names a process started after the last heartbeat),
    or no heartbeat for ``stale_s`` (here 1 s) from another host, whose pids cannot be checked; a live holder
    here is never taken for gone, however late its heartbeat. The lease row stays, guarding the run."""
    store = Store(tmp_path / "aloe.db")
    run_id, started = store.start_run("test", {}, 0), store.start_run("just started: no lease yet", {}, 0)
    trees = TreeStore(store)
    for run in (run_id, started):
        trees.set_status(trees.create_conversations(run, [PERSONA], 2)[0], "running")
    holder = {"dead": None, "mine": os.getpid()}.get(pid, pid)
    hold_lease(store, run_id, holder, None if host == "here" else "another-host", time.time() - silent_s)
    assert list(store.abandoned_runs(stale_s=1)) == ([run_id] if abandoned else [])
    assert store.end_abandoned_runs(stale_s=1) == ([run_id] if abandoned else [])
    statuses = dict(store.conn.execute("SELECT id, status FROM runs").fetchall())
    assert statuses == {run_id: "interrupted" if abandoned else "running", started: "running"}
    conversations = dict(store.conn.execute("SELECT run_id, status FROM conversations").fetchall())
    assert conversations == {run_id: "incomplete" if abandoned else "running", started: "running"}
    assert store.end_abandoned_runs(stale_s=1) == []  # once
    assert query(tmp_path, "SELECT run_id FROM run_leases") == [(run_id,)]


def test_a_run_taken_over_before_the_write_lock_is_left_running(tmp_path, monkeypatch):
    """Found abandoned, then resumed by another process before this one held the write lock: checked again
    under the lock, it is left alone."""
    store = Store(tmp_path / "aloe.db")
    run_id = store.start_run("test", {}, 0)
    found = iter([{run_id: "gone"}, {}])
    monkeypatch.setattr(store, "abandoned_runs", lambda stale_s: next(found))
    assert store.end_abandoned_runs() == []
    assert store.get_run(run_id)["status"] == "running"


@pytest.mark.parametrize("command", ["simulate", "eval"])
def test_every_conversation_failing_exits_3_and_marks_the_run_failed(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALOE_DB", str(tmp_path / "aloe.db"))
    (tmp_path / "aloe.toml").write_text("[backend]\nmax_retries = 0\ntimeout_s = 5\n")
    unreachable = "openai:http://127.0.0.1:9/v1#model"
    args = (["simulate", "--conversations", "2", "--turns", "1", "--role", f"all={unreachable}"]
            if command == "simulate" else
            ["eval", "--model", unreachable, "--role", f"user={unreachable}", "--role", f"judge={unreachable}",
             "--personas", "2", "--turns", "1"])  # fmt: skip
    result = CliRunner().invoke(cli, ["--config", "aloe.toml", *args])
    assert result.exit_code == 3, result.stderr
    _, status, reason = run_row(tmp_path)
    assert status == "failed" and reason.startswith("every conversation failed")


def test_an_unexpected_error_is_one_line_with_a_redacted_log(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("ALOE_DB", str(tmp_path / "aloe.db"))
    monkeypatch.setenv("ALOE_LOG_DIR", str(tmp_path / "logs"))

    def broken(self, limit=50):
        raise RuntimeError(f"boom with {secret}")

    monkeypatch.setattr(Store, "list_runs", broken)
    result = CliRunner().invoke(cli, ["runs", "list"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected RuntimeError: boom with ***")
    logs = list((tmp_path / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    text = logs[0].read_text()
    assert "Traceback" in text and "boom with ***" in text and secret not in text
    verbose = CliRunner().invoke(cli, ["-v", "runs", "list"])  # -v prints the traceback too
    assert "Traceback" in verbose.stderr and secret not in verbose.stderr


def test_a_key_inside_a_spec_never_reaches_the_store_or_the_output(tmp_path, monkeypatch):
    secret = "sk-test-NOT-IN-ANY-VARIABLE-42"  # only in the URL: redacted all the same
    monkeypatch.setenv("ALOE_DB", str(tmp_path / "aloe.db"))
    monkeypatch.setenv("ALOE_BACKEND__MAX_RETRIES", "0")
    result = CliRunner().invoke(cli, ["backends", "check", f"openai:http://u:{secret}@127.0.0.1:9/v1#x"])
    assert result.exit_code == 1 and secret not in result.stderr
    listed = CliRunner().invoke(cli, ["--json", "runs", "list"])
    assert secret not in listed.stdout and "u:***@" in listed.stdout
    dump = "\n".join(Store(tmp_path / "aloe.db").conn.iterdump())
    assert secret not in dump


def test_a_key_in_a_custom_variable_is_redacted_before_any_backend_is_built(tmp_path, monkeypatch):
    secret = "my-other-secret-abcdef"
    monkeypatch.setenv("MY_KEY", secret)
    monkeypatch.setenv("ALOE_BACKEND__API_KEY_ENV", "MY_KEY")
    monkeypatch.setenv("ALOE_DB", str(tmp_path / "aloe.db"))
    result = CliRunner().invoke(cli, ["backends", "check", f"{secret}:foo"])
    assert result.exit_code == 1 and secret not in result.stderr and "***" in result.stderr
