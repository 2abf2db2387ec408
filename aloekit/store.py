"""The project's SQLite database: runs, the LLM call log and its cache, with versioned migrations."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlite_utils

from aloekit.config import one_line
from aloekit.contents import ContentStore
from aloekit.errors import AloeError, StoreError, Terminated, first_leaf
from aloekit.secrets import redact

DEFAULT_DB = Path("aloe.db")
LEASE_STALE_S = 60.0
"""A run's lease is taken as abandoned after this long without a heartbeat."""
TRACKED_PACKAGES = (
    "aloekit",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "langgraph",
    "autogen-agentchat",
    "autogen-ext",
    "networkx",
    "sqlite-utils",
    "pydantic",
)


def utcnow() -> str:
    """Current UTC time as an ISO-8601 string (sortable, stored as TEXT)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _migrate_1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            command TEXT NOT NULL,
            config TEXT NOT NULL,
            versions TEXT NOT NULL,
            git_sha TEXT,
            seed INTEGER,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            status TEXT NOT NULL,
            error TEXT
        )"""
    )
    conn.execute(
        """CREATE TABLE llm_calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT,
            role TEXT NOT NULL,
            spec TEXT NOT NULL,
            cache_key TEXT NOT NULL,
            cacheable INTEGER NOT NULL,
            messages TEXT NOT NULL,
            options TEXT NOT NULL,
            response TEXT,
            finish_reason TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_s REAL,
            attempts INTEGER,
            cached INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            error TEXT,
            created_at TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX idx_llm_calls_cache ON llm_calls (cache_key, status, cacheable)")
    conn.execute("CREATE INDEX idx_llm_calls_run ON llm_calls (run_id)")


def _migrate_2(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE personas (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            embedding BLOB,
            embedding_model TEXT
        )"""
    )
    conn.execute("CREATE INDEX idx_personas_kind ON personas (kind)")
    conn.execute(
        """CREATE TABLE persona_pairs (
            id TEXT PRIMARY KEY,
            profile_id TEXT NOT NULL REFERENCES personas(id),
            personality_id TEXT NOT NULL REFERENCES personas(id),
            source TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )


def _migrate_3(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            kind TEXT NOT NULL,
            position INTEGER NOT NULL,
            profile_id TEXT,
            personality_id TEXT,
            persona TEXT NOT NULL,
            max_turns INTEGER NOT NULL,
            turns_done INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX idx_conversations_run ON conversations (run_id, position)")
    conn.execute(
        """CREATE TABLE turns (
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            turn INTEGER NOT NULL,
            record TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (conversation_id, turn)
        )"""
    )
    conn.execute(
        """CREATE TABLE tree_nodes (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            parent_id TEXT,
            turn INTEGER NOT NULL,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            label TEXT,
            chosen INTEGER NOT NULL DEFAULT 0,
            data TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX idx_tree_nodes_conversation ON tree_nodes (conversation_id, turn)")


def _migrate_4(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE eval_turns (
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            turn INTEGER NOT NULL,
            score INTEGER,
            record TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (conversation_id, turn)
        )"""
    )


def _migrate_5(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE judge_audits (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            judge_key TEXT NOT NULL,
            stage TEXT NOT NULL,
            judge TEXT NOT NULL,
            passed INTEGER NOT NULL,
            accuracy REAL,
            ci_low REAL,
            ci_high REAL,
            result TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX idx_judge_audits_key ON judge_audits (judge_key, created_at)")


def _migrate_6(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE run_leases (
            run_id TEXT PRIMARY KEY REFERENCES runs(id),
            owner TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            heartbeat_at REAL NOT NULL
        )"""
    )


PACKED_COLUMNS = (("turns", "record"), ("eval_turns", "record"), ("tree_nodes", "data"))
"""JSON columns whose repeated parts live in ``texts`` (:mod:`aloekit.contents`)."""


def _migrate_7(conn: sqlite3.Connection) -> None:
    """Prompts and texts stored once: the call log, turn records and tree nodes reference ``texts``."""
    # AUTOINCREMENT: an id freed by gc is never given to another text (a process may still remember it).
    conn.execute("CREATE TABLE texts (id INTEGER PRIMARY KEY AUTOINCREMENT, hash INTEGER NOT NULL, body TEXT NOT NULL)")
    conn.execute("CREATE INDEX idx_texts_hash ON texts (hash)")
    contents = ContentStore(conn, lines=False)
    conn.execute("ALTER TABLE llm_calls ADD COLUMN prompt_id INTEGER REFERENCES texts(id)")
    conn.execute("ALTER TABLE llm_calls ADD COLUMN response_id INTEGER REFERENCES texts(id)")
    for rows in _batches(conn, "llm_calls", "messages, response"):
        for rowid, messages, response in rows:
            response_id = None if response is None else contents.text_id(response)
            conn.execute("UPDATE llm_calls SET prompt_id = ?, response_id = ? WHERE rowid = ?",
                         [contents.prompt_id(json.loads(messages)), response_id, rowid])  # fmt: skip
    conn.execute("ALTER TABLE llm_calls DROP COLUMN messages")
    conn.execute("ALTER TABLE llm_calls DROP COLUMN response")
    # Only calls the cache may answer from are looked up by key.
    conn.execute("DROP INDEX idx_llm_calls_cache")
    conn.execute("CREATE INDEX idx_llm_calls_cache ON llm_calls (cache_key) WHERE status = 'ok' AND cacheable = 1 "
                 "AND cached = 0")  # fmt: skip
    simulated = {r for (r,) in conn.execute("SELECT id FROM conversations WHERE kind != 'evaluation'")}
    for table, column in PACKED_COLUMNS:
        for rows in _batches(conn, table, f"{column}, {'conversation_id' if table == 'tree_nodes' else 'NULL'}"):
            for rowid, value, conversation_id in rows:
                if conversation_id in simulated:  # migration 8 deletes a simulation's node rows (same transaction)
                    continue
                packed = contents.dumps(json.loads(value))
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", [packed, rowid])


def _migrate_8(conn: sqlite3.Connection) -> None:
    """A simulation's (or rollout's) tree is built from its turn records: the node rows that copied them go."""
    conn.execute("DELETE FROM tree_nodes WHERE conversation_id IN "
                 "(SELECT id FROM conversations WHERE kind != 'evaluation')")  # fmt: skip


def _migrate_9(conn: sqlite3.Connection) -> None:
    """Long many-line texts may be stored as their lines' ids (:mod:`aloekit.contents`); older rows stay whole."""
    conn.execute("ALTER TABLE texts ADD COLUMN lined INTEGER NOT NULL DEFAULT 0")


def _batches(conn: sqlite3.Connection, table: str, columns: str, size: int = 1000) -> Iterator[list[tuple]]:
    """``(rowid, columns...)`` rows of ``table`` in rowid order, ``size`` at a time (a migration of a large
    database must not hold a whole table in memory)."""
    last = -(2**63)
    while rows := conn.execute(f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                               [last, size]).fetchall():  # fmt: skip
        yield rows
        last = rows[-1][0]


# Append-only: migration i+1 upgrades a database at schema version i. Never edit a released one.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
    _migrate_6,
    _migrate_7,
    _migrate_8,
    _migrate_9,
]
SCHEMA_VERSION = len(MIGRATIONS)


def cache_key(
    spec: str, messages: list[dict[str, Any]], options: Mapping[str, Any], compute: Mapping[str, Any] | None = None
) -> str:
    """Hash of (backend spec, messages, generation options, and for an in-process model the settings that change
    what it computes) identifying one LLM request."""
    request = {"spec": spec, "messages": messages, "options": dict(options)}
    if compute:  # absent for servers, so their keys are what they were
        request["compute"] = dict(compute)
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


class Store:
    """The SQLite database behind every stage, written through sqlite-utils.

    WAL mode lets readers run beside the writer, a busy timeout makes concurrent processes wait their
    turn instead of failing, and one lock per process keeps a single writer per process.
    """

    def __init__(self, path: Path | str = DEFAULT_DB, *, busy_timeout_s: float = 30.0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if self.path.parent and not self.path.parent.exists():
            raise StoreError(f"database {self.path}: folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise StoreError(f"database {self.path}: is a folder, not a database file")
        if readonly and not self.path.is_file():
            raise StoreError(f"database {self.path}: not found")
        try:
            target = f"{self.path.resolve().as_uri()}?mode=ro" if readonly else self.path  # as_uri escapes ? and #
            conn = sqlite3.connect(
                target, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None, uri=readonly
            )
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if not readonly:
                self._refuse_foreign(conn)  # before WAL mode, which rewrites the file's header
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"database {self.path}: {exc}") from None
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self.contents = ContentStore(conn, self._lock)
        """Texts, prompts and call records stored once (:mod:`aloekit.contents`)."""
        if not readonly:
            try:
                self.migrate()
            except sqlite3.OperationalError as exc:  # locked past the busy timeout by another process
                raise StoreError(f"database {self.path}: {exc} (waited {busy_timeout_s:g} s)") from None
        elif self.schema_version != SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path}: schema version {self.schema_version}, this aloekit reads "
                f"{SCHEMA_VERSION}; run any writing aloe command on it once to migrate it"
            )

    @property
    def conn(self) -> sqlite3.Connection:
        """The underlying connection (autocommit; use :meth:`transaction` to group writes)."""
        return self.db.conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group writes atomically; ``BEGIN IMMEDIATE`` takes the write lock up front so it never deadlocks."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self.contents.forget()  # texts interned in the transaction are gone with it
                raise

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Refuse another program's database: creating aloekit's tables in it would change a file not ours."""
        # One statement, one snapshot: another process's migration may commit between two.
        version, foreign = conn.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), (SELECT name FROM sqlite_master LIMIT 1)"
        ).fetchone()
        if version == 0 and foreign is not None:
            conn.close()
            raise StoreError(f"database {self.path}: an SQLite database but not an aloekit one (it holds "
                             f"{foreign!r} and no aloekit schema); give another --db")  # fmt: skip

    def migrate(self) -> None:
        """Bring the schema up to :data:`SCHEMA_VERSION`, once, even with several processes starting."""
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path}: schema version {version} is newer than this aloekit "
                    f"({SCHEMA_VERSION}); upgrade aloekit"
                )
            for step in MIGRATIONS[version:]:
                step(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def insert(self, table: str, row: Mapping[str, Any]) -> int | None:
        """Insert one row (strings redacted) under the process's write lock; returns its rowid."""
        with self._lock:
            return self.db[table].insert(_redacted(row)).last_rowid

    def update(self, table: str, pk: Any, values: Mapping[str, Any]) -> None:
        """Update one row by primary key (strings redacted) under the process's write lock."""
        with self._lock:
            self.db[table].update(pk, _redacted(values))

    # Runs -------------------------------------------------------------------------------------------

    def start_run(self, command: str, config: Mapping[str, Any], seed: int | None = None) -> str:
        """Record a new run with its resolved config, package versions and git sha; return its id."""
        run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.insert(
            "runs",
            {
                "id": run_id,
                "command": redact(command),  # a key inside a spec (a URL's user:key@) stays out of the store
                "config": redact(json.dumps(config, sort_keys=True, default=str)),
                "versions": json.dumps(package_versions(), sort_keys=True),
                "git_sha": git_sha(),
                "seed": seed,
                "started_at": utcnow(),
                "status": "running",
            },
        )
        return run_id

    def finish_run(self, run_id: str, status: str = "completed", error: str | None = None) -> None:
        """Mark a run ended with ``status`` (completed, failed, interrupted)."""
        self.update("runs", run_id, {"status": status, "ended_at": utcnow(), "error": error})

    def settle_conversations(self, run_id: str) -> None:
        """Mark a stopped run's conversations that were in progress ``incomplete`` (``--resume`` continues them)."""
        with self._lock:
            self.conn.execute(
                "UPDATE conversations SET status = 'incomplete' WHERE run_id = ? AND status = 'running'", [run_id]
            )

    def take_lease(self, run_id: str, owner: str, stale_s: float) -> None:
        """Become the one process working on ``run_id``, unless a live process holds it (:class:`StoreError`)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT owner, host, pid, heartbeat_at FROM run_leases WHERE run_id = ?", [run_id])
            held = row.fetchone()
            now = time.time()
            if held and held[0] != owner and now - held[3] < stale_s and _alive(held[1], held[2], held[3]):
                raise StoreError(
                    f"run {run_id} is being worked on by process {held[2]} on {held[1]} (alive {now - held[3]:.0f}s "
                    "ago); wait for it to end or stop it, then resume"
                )
            conn.execute("INSERT OR REPLACE INTO run_leases VALUES (?, ?, ?, ?, ?)",
                         [run_id, owner, socket.gethostname(), os.getpid(), now])  # fmt: skip

    def renew_lease(self, run_id: str, owner: str) -> None:
        """Record that the lease holder is alive."""
        with self._lock:
            self.conn.execute(
                "UPDATE run_leases SET heartbeat_at = ? WHERE run_id = ? AND owner = ?", [time.time(), run_id, owner]
            )

    def release_lease(self, run_id: str, owner: str) -> None:
        """Give the run up (only if this owner still holds it)."""
        with self._lock:
            self.conn.execute("DELETE FROM run_leases WHERE run_id = ? AND owner = ?", [run_id, owner])

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """Return one run row, or None."""
        rows = list(self.db["runs"].rows_where("id = ?", [run_id]))
        return rows[0] if rows else None

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The config a run was started with ({} when there is no such run: :func:`stored_config`)."""
        run = self.get_run(run_id)
        return stored_config(run["config"]) if run else {}

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the newest runs first, each with its LLM call and token counts."""
        sql = """
            SELECT r.*, COUNT(c.id) AS calls,
                   COALESCE(SUM(c.prompt_tokens), 0) + COALESCE(SUM(c.completion_tokens), 0) AS tokens
            FROM runs r LEFT JOIN llm_calls c ON c.run_id = r.id
            GROUP BY r.id ORDER BY r.started_at DESC LIMIT ?"""
        return [dict(row) for row in self.db.query(sql, [limit])]

    def live_runs(self, stale_s: float = LEASE_STALE_S) -> list[str]:
        """Runs a live process is working on now (a fresh lease held by a process that exists)."""
        now = time.time()
        rows = self.conn.execute("SELECT run_id, host, pid, heartbeat_at FROM run_leases").fetchall()
        return [run_id for run_id, host, pid, beat in rows if now - beat < stale_s and _alive(host, pid, beat)]

    def abandoned_runs(self, stale_s: float = LEASE_STALE_S) -> dict[str, str]:
        """Runs still ``running`` whose process ended without ending them (SIGKILL, out of memory, a full disk:
        their lease holder is gone from this host, or silent for ``stale_s`` on another), each with why. A holder
        alive on this host is never taken for gone, however late its heartbeat (:meth:`take_lease` is less
        strict: a ``--resume`` may take over a silent lease, but only a process's end ends its run)."""
        now, here, abandoned = time.time(), socket.gethostname(), {}
        rows = self.conn.execute(
            "SELECT l.run_id, l.host, l.pid, l.heartbeat_at FROM run_leases l JOIN runs r ON r.id = l.run_id "
            "WHERE r.status = 'running'"
        ).fetchall()
        for run_id, host, pid, beat in rows:
            last = datetime.fromtimestamp(beat, UTC).isoformat(timespec="seconds")
            if host == here and not _alive(host, pid, beat):
                gone = f"its process ({pid} on {host}) ended without ending the run, last seen {last}"
            elif host != here and now - beat >= stale_s:
                gone = f"its process ({pid} on {host}) has not been heard from since {last}"
            else:
                continue
            abandoned[run_id] = f"{gone} (killed, out of memory, a full disk or a lost machine); --resume continues it"
        return abandoned

    def end_abandoned_runs(self, stale_s: float = LEASE_STALE_S) -> list[str]:
        """Mark the :meth:`abandoned_runs` ``interrupted`` with why, their conversations in progress
        ``incomplete``, as their process would have; returns their ids. Their lease rows stay: should a holder
        taken for gone be alive after all, a ``--resume`` still cannot take its run over while it beats."""
        if not self.abandoned_runs(stale_s):  # the common case reads only, never waiting for the write lock
            return []
        with self.transaction() as conn:  # checked again under the lock: a --resume may have taken one over
            abandoned = self.abandoned_runs(stale_s)
            for run_id, reason in abandoned.items():
                conn.execute("UPDATE runs SET status = 'interrupted', ended_at = ?, error = ? WHERE id = ?",
                             [utcnow(), reason, run_id])  # fmt: skip
                self.settle_conversations(run_id)
        return list(abandoned)

    def delete_run(self, run_id: str) -> None:
        """Remove a run with its conversations, turns, tree nodes, call log and audits (texts stay for gc)."""
        if self.get_run(run_id) is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        if run_id in self.live_runs():
            raise StoreError(f"run {run_id} is in progress; stop it first")
        relying = self.conn.execute(
            "SELECT r.id, a.id FROM runs r JOIN judge_audits a ON json_extract(r.config, '$.judge_audit') = a.id "
            "WHERE a.run_id = ? AND r.id != ?", [run_id, run_id]
        ).fetchone()  # fmt: skip
        if relying:  # its results name this audit: removing it would leave them citing a judge check that is gone
            raise StoreError(f"run {run_id} holds judge audit {relying[1]}, which run {relying[0]} relies on; "
                             f"delete {relying[0]} first")  # fmt: skip
        with self.transaction() as conn:
            conversations = "SELECT id FROM conversations WHERE run_id = ?"
            for table in ("turns", "eval_turns", "tree_nodes"):
                conn.execute(f"DELETE FROM {table} WHERE conversation_id IN ({conversations})", [run_id])
            for table in ("conversations", "llm_calls", "judge_audits", "run_leases"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            conn.execute("DELETE FROM runs WHERE id = ?", [run_id])

    def collect_garbage(self) -> dict[str, int]:
        """Delete the texts no stored row references, then compact the file.

        Returns ``texts_removed``, ``text_bytes_removed`` and the file's ``bytes_before``/``bytes_after``.
        Refused while a run is in progress: its process may hold ids of texts it is about to reference.
        """
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # in WAL mode the file's size shows only after one
        before = self.path.stat().st_size
        with self.transaction() as conn:  # holding the write lock: no run can start or save meanwhile
            if live := self.live_runs():
                raise StoreError(f"run {live[0]} is in progress; collect garbage when no run is")
            documents = (value for table, column in PACKED_COLUMNS
                         for (value,) in conn.execute(f"SELECT {column} FROM {table}"))  # fmt: skip
            prompts = (p for (p,) in conn.execute("SELECT prompt_id FROM llm_calls"))
            responses = (r for (r,) in conn.execute("SELECT response_id FROM llm_calls"))
            keep = self.contents.referenced(documents, prompts, responses)
            unused = [i for (i,) in conn.execute("SELECT id FROM texts") if i not in keep]
            freed = 0
            for start in range(0, len(unused), 500):
                chunk = unused[start : start + 500]
                marks = ",".join("?" * len(chunk))
                freed += conn.execute(f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM texts WHERE id IN ({marks})",
                                      chunk).fetchone()[0]  # fmt: skip
                conn.execute(f"DELETE FROM texts WHERE id IN ({marks})", chunk)
        self.contents.forget()
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"texts_removed": len(unused), "text_bytes_removed": freed, "bytes_before": before,
                "bytes_after": self.path.stat().st_size}  # fmt: skip

    # LLM call log and cache -------------------------------------------------------------------------

    def log_call(self, row: Mapping[str, Any]) -> None:
        """Append one LLM call (successful, failed or served from cache) to the log.

        ``row`` holds the sent ``messages`` (a list) and the ``response`` text, stored as ``texts`` ids.
        """
        values = dict(row)
        messages, response = values.pop("messages"), values.pop("response", None)
        with self.transaction():
            values["prompt_id"] = self.contents.prompt_id(messages)
            values["response_id"] = None if response is None else self.contents.text_id(response)
            self.insert("llm_calls", {"created_at": utcnow(), **values})

    def cached_response(self, key: str) -> dict[str, Any] | None:
        """Return the newest successful cacheable call with this key (with its ``response``), or None."""
        rows = self.db.query(
            "SELECT * FROM llm_calls WHERE cache_key = ? AND status = 'ok' AND cacheable = 1 AND cached = 0 "
            "ORDER BY id DESC LIMIT 1",
            [key],
        )
        row = next(iter(rows), None)
        if row is None or row["response_id"] is None:
            return None
        return {**row, "response": self.contents.text(row["response_id"])}

    def calls(self, run_id: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
        """The call log (of one run and/or role), oldest first, each row with its ``messages`` and ``response``."""
        where = " AND ".join(c for c, v in (("run_id = ?", run_id), ("role = ?", role)) if v is not None)
        args = [v for v in (run_id, role) if v is not None]
        return [self._call(r) for r in self.db["llm_calls"].rows_where(where or None, args, order_by="id")]

    def _call(self, row: dict[str, Any]) -> dict[str, Any]:
        response_id = row["response_id"]
        return {**row, "messages": self.contents.messages(row["prompt_id"]),
                "response": None if response_id is None else self.contents.text(response_id)}  # fmt: skip

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def stored_config(text: str | None) -> dict[str, Any]:
    """A run row's stored config, or {} when it is not a JSON object: one damaged row must not break a page or a
    lookup (the commands that need a field of it say so themselves)."""
    try:
        config = json.loads(text or "{}")
    except (TypeError, ValueError, RecursionError):
        return {}
    return config if isinstance(config, dict) else {}


RUN_KINDS = {"eval_resolved": "evaluation", "simulation_resolved": "simulation", "grpo": "online RL (GRPO)",
             "train": "training", "audit": "judge audit"}  # fmt: skip
"""What a run did, from the section its stored config holds."""


def run_kind(config: Mapping[str, Any]) -> str | None:
    """What the run whose stored config is ``config`` did (None: another command's, a chat or a check)."""
    return next((name for key, name in RUN_KINDS.items() if key in config), None)


def run_end_state(exc: BaseException) -> tuple[str, str]:
    """How a run that stopped on ``exc`` ended: ``interrupted`` (Ctrl-C, SIGTERM, SIGHUP) or ``failed``, and why
    (one line)."""
    exc = first_leaf(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", exc.signal_name if isinstance(exc, Terminated) else "Ctrl-C"
    reason = str(exc) if isinstance(exc, AloeError) else f"{type(exc).__name__}: {exc}"
    return "failed", redact(one_line(reason))


def _redacted(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with every string passed through :func:`redact`: a key given inside a spec is never stored."""
    return {key: redact(value) if isinstance(value, str) else value for key, value in row.items()}


def _alive(host: str, pid: int, last_beat: float) -> bool:
    """Whether the lease holder may still run: a process on another host is assumed alive until stale; here,
    ``pid`` must exist, not as a zombie, and not have started after its ``last_beat`` (a reused pid)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # Linux: the state and start time of the process now holding that pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))  # fmt: skip
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return True
    return fields[0] != "Z" and started <= last_beat + 2  # btime is whole seconds


class RunLease:
    """One writer per run: a lease row with a heartbeat, taken over when its holder is gone or silent.

    A SIGKILLed holder on this host is detected at once (its pid is gone); elsewhere its lease goes
    stale after ``stale_s`` without a heartbeat.
    """

    def __init__(self, store: Store, run_id: str, stale_s: float = LEASE_STALE_S) -> None:
        self.store, self.run_id, self.stale_s = store, run_id, stale_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> RunLease:
        self.store.take_lease(self.run_id, self.owner, self.stale_s)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.store.release_lease(self.run_id, self.owner)
        except sqlite3.OperationalError:  # locked: the lease goes stale, and its pid is gone once we exit
            if exc[0] is None:
                raise

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_s / 4):
            try:
                self.store.renew_lease(self.run_id, self.owner)
            except sqlite3.Error:  # a busy database: the next beat tries again
                continue


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run's results."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha(cwd: Path | None = None) -> str | None:
    """The current git commit of ``cwd``, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or os.getcwd(), capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
