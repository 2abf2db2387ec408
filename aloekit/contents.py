"""Content-addressed storage: every text, prompt and call record is stored once and referenced by id.

A conversation's history is resent with every call, so the same messages recur in every later prompt,
and each call lands in a turn record, a tree node and the call log. Stored plainly that is quadratic in
the turns and three times over; here each distinct text is one row of ``texts``, a prompt is a list of
(role, text id) pairs (itself a text), and a call record is a packed JSON text. A long text of many lines
is stored as its lines' ids, so a prompt that restates the whole chat adds only its new lines. Documents
(turn records, node data) keep their shape with references in place of the repeated parts: ``{"$text": id}``,
``{"$prompt": id}``, ``{"$call": id}``, so small fields stay readable with SQLite's ``json_extract``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

from aloekit.errors import StoreError
from aloekit.secrets import redact

MIN_SHARED_CHARS = 64
"""Strings at least this long are stored once; shorter ones stay inline (a reference would not save space)."""
LINED_MIN_CHARS = 512
"""Texts at least this long that span several lines are stored as their lines' ids: a prompt that restates
the chat so far (the inducer's) repeats every line of the turn before, and each line is kept once."""
CACHE_ENTRIES = 20_000
"""Texts remembered per process in each direction: the history a conversation resends is found without a query."""
REFERENCES = ("$text", "$prompt", "$call")
LITERAL = "$literal"
"""Wraps a document's own dict that looks like a reference, so it reads back as itself."""


def content_hash(body: str) -> int:
    """The first 8 bytes of the body's SHA-256 as a signed 64-bit integer (SQLite's INTEGER).

    Only a lookup key: equal hashes are compared by body before a row is shared, so a collision
    costs a second row, never a wrong text.
    """
    return int.from_bytes(hashlib.sha256(body.encode()).digest()[:8], "big", signed=True)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ContentStore:
    """Interns texts into the ``texts`` table of a connection and packs/unpacks documents through it.

    Writes go through the caller's connection, so a text interned inside a transaction is rolled back
    with it (call :meth:`forget` then). Not a cache of the whole table: bounded, per process.
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock | None = None, lines: bool = True) -> None:
        self.conn = conn
        self._lock = lock or threading.RLock()
        # Without ``lines`` every text is stored whole, as schema 7 (whose migration uses this class) did.
        self._lined = "lined" if lines else "0"
        self._ids: dict[str, int] = {}
        self._bodies: dict[int, str] = {}

    def forget(self) -> None:
        """Drop what this process remembers (after a rollback, the ids it learned may not exist)."""
        with self._lock:
            self._ids.clear()
            self._bodies.clear()

    @staticmethod
    def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= CACHE_ENTRIES:
            del cache[next(iter(cache))]  # oldest first: recent history is what the next calls resend
        cache[key] = value

    # Texts ------------------------------------------------------------------------------------------

    def text_id(self, text: str) -> int:
        """The id of ``text`` (secrets redacted) in ``texts``, adding it if new."""
        with self._lock:
            if (known := self._ids.get(text)) is not None:
                return known
            body = redact(text)
            row_id = self._intern(body, self._lines(body))
            self._remember(self._ids, text, row_id)
            self._remember(self._bodies, row_id, body)
            return row_id

    def _lines(self, body: str) -> list[int | str] | None:
        """How a long many-line ``body`` is stored: the ids of its lines long enough to share, with runs of
        short ones inline; None for a body stored whole."""
        lines = body.splitlines(keepends=True)
        if self._lined == "0" or len(body) < LINED_MIN_CHARS or len(lines) < 2:
            return None
        parts: list[int | str] = []
        for line in lines:
            if len(line) >= MIN_SHARED_CHARS:
                if (line_id := self._ids.get(line)) is None:  # a redacted body's lines need no redaction
                    line_id = self._intern(line, None)
                    self._remember(self._ids, line, line_id)
                parts.append(line_id)
            elif parts and isinstance(parts[-1], str):
                parts[-1] += line
            else:
                parts.append(line)
        return parts

    def _intern(self, body: str, lines: list[int | str] | None) -> int:
        """The row holding ``body`` (as ``lines`` when given), found by hash and compared, or a new one."""
        stored = body if lines is None else _compact(lines)
        digest = content_hash(body)
        query = f"SELECT id, body, {self._lined} FROM texts WHERE hash = ?"
        for row_id, existing, lined in self.conn.execute(query, [digest]):
            # The same body gives the same lines; a row stored whole (before lines existed) matches as itself.
            if existing == (stored if lined else body):
                return row_id
        if lines is None:
            row_id = self.conn.execute("INSERT INTO texts (hash, body) VALUES (?, ?)", [digest, body]).lastrowid
        else:
            row_id = self.conn.execute(
                "INSERT INTO texts (hash, body, lined) VALUES (?, ?, 1)", [digest, stored]
            ).lastrowid
        assert row_id is not None
        return row_id

    def texts(self, ids: Iterable[int]) -> dict[int, str]:
        """Bodies by id; an id that is not stored is an error naming it."""
        wanted = set(ids)
        with self._lock:
            found = {i: self._bodies[i] for i in wanted if i in self._bodies}
            missing = sorted(wanted - found.keys())
            lined: dict[int, list[int | str]] = {}
            for start in range(0, len(missing), 500):  # SQLite's bound-parameter limit
                chunk = missing[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT id, body, {self._lined} FROM texts WHERE id IN ({marks})"
                for row_id, body, is_lined in self.conn.execute(query, chunk):
                    if is_lined:
                        lined[row_id] = json.loads(body)
                    else:
                        found[row_id] = body
                        self._remember(self._bodies, row_id, body)
            if lined:
                lines = self.texts(part for parts in lined.values() for part in parts if isinstance(part, int))
                for row_id, parts in lined.items():
                    found[row_id] = "".join(lines[p] if isinstance(p, int) else p for p in parts)
                    self._remember(self._bodies, row_id, found[row_id])
        if lost := wanted - found.keys():
            raise StoreError(f"texts {sorted(lost)[:5]} are referenced but not stored: the database is damaged")
        return found

    def text(self, text_id: int) -> str:
        """One body by id."""
        return self.texts([text_id])[text_id]

    # Prompts and calls ------------------------------------------------------------------------------

    def prompt_id(self, messages: list[dict[str, Any]]) -> int:
        """The id of a chat message list (string ``role`` and ``content``), stored as
        ``[[role, text id, {other keys}?], ...]``."""
        entries = []
        for message in messages:
            extra = {k: v for k, v in message.items() if k not in ("role", "content")}
            entries.append([message["role"], self.text_id(message["content"]), *([extra] if extra else [])])
        return self.text_id(_compact(entries))

    def messages(self, prompt_id: int) -> list[dict[str, Any]]:
        """The message list stored under ``prompt_id``."""
        entries = json.loads(self.text(prompt_id))
        bodies = self.texts(entry[1] for entry in entries)
        return [{"role": e[0], "content": bodies[e[1]], **(e[2] if len(e) > 2 else {})} for e in entries]

    def pack(self, value: Any) -> Any:
        """``value`` (JSON-shaped) with long strings, message lists and call records replaced by references."""
        if isinstance(value, str):
            return {"$text": self.text_id(value)} if len(value) >= MIN_SHARED_CHARS else value
        if isinstance(value, list):
            return [self.pack(v) for v in value]
        if not isinstance(value, dict):
            return value
        if _reference(value) or (len(value) == 1 and LITERAL in value):
            return {LITERAL: {key: self.pack(item) for key, item in value.items()}}
        packed: dict[str, Any] = {}
        for key, item in value.items():
            if key == "messages" and isinstance(item, list) and all(_chat_message(m) for m in item):
                packed[key] = {"$prompt": self.prompt_id(item)}
            elif key.endswith("calls") and isinstance(item, list) and all(isinstance(c, dict) for c in item):
                # An evaluation's call is in its turn record and again in its tree node: the second copy is one id.
                packed[key] = [{"$call": self.text_id(_compact(self.pack(call)))} for call in item]
            else:
                packed[key] = self.pack(item)
        return packed

    def unpack(self, value: Any) -> Any:
        """The inverse of :meth:`pack`."""
        if isinstance(value, list):
            return [self.unpack(v) for v in value]
        if not isinstance(value, dict):
            return value
        if reference := _reference(value):
            kind, ref = reference
            if kind == "$text":
                return self.text(ref)
            if kind == "$prompt":
                return self.messages(ref)
            return self.unpack(json.loads(self.text(ref)))
        if len(value) == 1 and isinstance(value.get(LITERAL), dict):
            value = value[LITERAL]
        return {key: self.unpack(item) for key, item in value.items()}

    def dumps(self, value: Any) -> str:
        """``value`` packed, as the JSON text stored in a record or data column."""
        return _compact(self.pack(value))

    def loads(self, text: str) -> Any:
        """The value a :meth:`dumps` text stands for."""
        return self.unpack(json.loads(text))

    # Garbage ----------------------------------------------------------------------------------------

    def referenced(self, documents: Iterable[str], prompt_ids: Iterable[int], text_ids: Iterable[int]) -> set[int]:
        """Every text id reachable from packed JSON ``documents``, prompts and plain texts (the call log's)."""
        pending = [("$prompt", i) for i in prompt_ids if i is not None] + [
            ("$text", i) for i in text_ids if i is not None
        ]
        for document in documents:
            _collect(json.loads(document), pending)
        seen: set[tuple[str, int]] = set()
        while pending:
            reference = pending.pop()
            if reference in seen:
                continue
            seen.add(reference)
            kind, ref = reference
            if kind == "$prompt":
                pending += [("$text", entry[1]) for entry in json.loads(self.text(ref))]
            elif kind == "$call":
                _collect(json.loads(self.text(ref)), pending)
        ids = {ref for _, ref in seen}
        return ids | self._line_ids(ids)

    def _line_ids(self, ids: set[int]) -> set[int]:
        """The ids of the lines that the texts among ``ids`` stored as lines are made of."""
        ordered, lines = sorted(ids), set[int]()
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            query = f"SELECT body FROM texts WHERE {self._lined} = 1 AND id IN ({','.join('?' * len(chunk))})"
            for (body,) in self.conn.execute(query, chunk):
                lines.update(part for part in json.loads(body) if isinstance(part, int))
        return lines


def _reference(value: dict[str, Any]) -> tuple[str, int] | None:
    """(kind, id) when ``value`` is a reference ``{"$text": id}``..."""
    if len(value) == 1:
        key, ref = next(iter(value.items()))
        if key in REFERENCES and type(ref) is int:
            return key, ref
    return None


def _chat_message(message: Any) -> bool:
    return (
        isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)
    )


def _collect(value: Any, into: list[tuple[str, int]]) -> None:
    if isinstance(value, list):
        for item in value:
            _collect(item, into)
    elif isinstance(value, dict):
        if reference := _reference(value):
            into.append(reference)
            return
        for item in value.values():
            _collect(item, into)
