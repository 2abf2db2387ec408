"""Conversations, their turn records and tree nodes in the store, written one completed turn at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aloekit.errors import AloeError
from aloekit.graphs.records import TurnRecord
from aloekit.graphs.tree import ConversationTree, root_id
from aloekit.personas.models import PersonaPair
from aloekit.store import Store, utcnow

UNFINISHED = ("pending", "running", "incomplete", "failed")


@dataclass
class Conversation:
    """A stored conversation's header."""

    id: str
    run_id: str
    kind: str
    position: int
    """Index of the conversation in its run: random draws derive from it, never from the id."""
    persona: PersonaPair
    max_turns: int
    turns_done: int
    status: str
    error: str | None


def conversation_key(seed: int, position: int, persona: PersonaPair) -> str:
    """A conversation's name in exports: the same in every rerun with the same seed (its id holds a timestamp)."""
    return hashlib.sha256(f"{seed}:{position}:{persona.id}".encode()).hexdigest()[:16]


class TreeStore:
    """Reads and writes conversations; a turn's record lands in one transaction, so a crash leaves either
    the whole turn or none of it, and its primary key (conversation, turn) makes a duplicate impossible."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create_conversations(
        self,
        run_id: str,
        personas: list[PersonaPair],
        max_turns: int | Sequence[int],
        kind: str = "simulation",
        first_position: int = 0,
    ) -> list[str]:
        """Add one pending conversation per persona (with its root node); returns their ids.

        ``max_turns`` is one length for all, or one per persona; positions count from ``first_position``
        (a run that adds conversations as it goes, like an RL rollout, numbers them on).
        """
        ids = []
        now = utcnow()
        lengths = [max_turns] * len(personas) if isinstance(max_turns, int) else list(max_turns)
        with self.store.transaction():
            for position, (persona, turns) in enumerate(zip(personas, lengths, strict=True), start=first_position):
                cid = f"{run_id}-{position:04d}"
                self.store.insert("conversations", {
                    "id": cid, "run_id": run_id, "kind": kind, "position": position,
                    "profile_id": persona.profile.id, "personality_id": persona.personality.id,
                    "persona": persona.model_dump_json(), "max_turns": turns, "turns_done": 0,
                    "status": "pending", "created_at": now, "updated_at": now,
                })  # fmt: skip
                if kind == "evaluation":  # the only kind whose tree is stored as nodes (see save_turn)
                    self.store.insert("tree_nodes", {
                        "id": root_id(cid), "conversation_id": cid, "parent_id": None, "turn": 0,
                        "role": "persona", "text": persona.describe(), "label": None, "chosen": 1,
                        "data": self.store.contents.dumps({"persona": persona.model_dump(mode="json")}),
                    })  # fmt: skip
                ids.append(cid)
        return ids

    def _conversation(self, row: dict[str, Any]) -> Conversation:
        return Conversation(
            id=row["id"], run_id=row["run_id"], kind=row["kind"], position=row["position"],
            persona=PersonaPair.model_validate_json(row["persona"]), max_turns=row["max_turns"],
            turns_done=row["turns_done"], status=row["status"], error=row["error"],
        )  # fmt: skip

    def get(self, conversation_id: str) -> Conversation:
        """One conversation, or an error naming the unknown id."""
        rows = list(self.store.db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise AloeError(f"no conversation {conversation_id!r} in {self.store.path}")
        return self._conversation(rows[0])

    def conversations(self, run_id: str | None = None, statuses: tuple[str, ...] | None = None) -> list[Conversation]:
        """Conversations of a run (or all), in creation order, optionally filtered by status."""
        clauses, args = [], []
        if run_id:
            clauses.append("run_id = ?")
            args.append(run_id)
        if statuses:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            args += list(statuses)
        rows = self.store.db["conversations"].rows_where(
            " AND ".join(clauses) or None, args, order_by="created_at, position"
        )
        return [self._conversation(r) for r in rows]

    def records(self, conversation_id: str) -> list[TurnRecord]:
        """The saved turns of a conversation, in order."""
        rows = self.store.db["turns"].rows_where("conversation_id = ?", [conversation_id], order_by="turn")
        return [TurnRecord.model_validate(self.store.contents.loads(r["record"])) for r in rows]

    def save_turn(self, record: TurnRecord, complete: bool = False) -> None:
        """Persist one finished turn (record and progress) atomically.

        The record is the whole turn: its tree nodes are derived from it when read (:meth:`tree`), so none
        are stored (a second copy of every message and fact, a fifth of a simulation's database).
        """
        cid, turn = record.conversation_id, record.turn
        with self.store.transaction() as conn:
            if turn > 1 and conn.execute("SELECT 1 FROM turns WHERE conversation_id = ? AND turn = ?",
                                         [cid, turn - 1]).fetchone() is None:  # fmt: skip
                raise AloeError(f"{cid}: turn {turn} saved before turn {turn - 1}")
            packed = self.store.contents.dumps(record.model_dump(mode="json"))
            self.store.insert("turns", {"conversation_id": cid, "turn": turn, "record": packed, "created_at": utcnow()})
            status = "complete" if complete else "running"
            conn.execute(
                "UPDATE conversations SET turns_done = ?, status = ?, error = NULL, updated_at = ? WHERE id = ?",
                [turn, status, utcnow(), cid],
            )

    def set_status(self, conversation_id: str, status: str, error: str | None = None) -> None:
        """Mark a conversation pending/running/complete/incomplete/failed (with the reason)."""
        self.store.update("conversations", conversation_id, {"status": status, "error": error, "updated_at": utcnow()})

    def key(self, conversation: Conversation) -> str:
        """The conversation's export key (:func:`conversation_key`, seeded by its run's seed)."""
        run = self.store.get_run(conversation.run_id)
        return conversation_key((run or {}).get("seed") or 0, conversation.position, conversation.persona)

    def export_keys(self, conversations: Sequence[Conversation]) -> dict[str, str]:
        """Export keys by conversation id. Runs with the same seed share keys (that is what makes a rerun's
        export identical), so when they are exported together a repeated key gets ``-2``, ``-3``... in order."""
        keys: dict[str, str] = {}
        seen: dict[str, int] = {}
        for conversation in conversations:
            key = self.key(conversation)
            seen[key] = seen.get(key, 0) + 1
            keys[conversation.id] = key if seen[key] == 1 else f"{key}-{seen[key]}"
        return keys

    def tree(self, conversation_id: str) -> ConversationTree:
        """The conversation's tree: a simulation's rebuilt from its saved turns, an evaluation's read from its
        tree nodes (it has no simulation turn records), each reply carrying its judge score."""
        conversation = self.get(conversation_id)
        if conversation.kind == "evaluation":
            rows = [
                {**row, "data": self.store.contents.loads(row["data"])}
                for row in self.store.db["tree_nodes"].rows_where(
                    "conversation_id = ?", [conversation_id], order_by="turn, role DESC"
                )
            ]
            return ConversationTree.from_nodes(conversation_id, rows, kind="evaluation")
        return ConversationTree.from_records(conversation_id, conversation.persona, self.records(conversation_id))

    def status_counts(self, run_id: str) -> dict[str, int]:
        """How many conversations of a run are in each status."""
        rows = self.store.conn.execute(
            "SELECT status, COUNT(*) FROM conversations WHERE run_id = ? GROUP BY status", [run_id]
        ).fetchall()
        return dict(rows)
