"""Flatten conversation trees into trl's conversational formats: SFT ``prompt``/``completion`` rows
(or coherent whole-conversation ``messages`` rows), DPO ``prompt``/``chosen``/``rejected`` rows, and a
flat one-row-per-node tree export. Every row follows the path the conversation actually took. Pure
functions."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aloekit.agents.base import Message
from aloekit.graphs.records import TurnRecord
from aloekit.graphs.tree import ConversationTree

Branch = Literal["preferred", "rejected"]


@dataclass
class FlattenReport:
    """What flattening kept and skipped, with reasons counted."""

    rows: int = 0
    conversations: int = 0
    unlabelled_turns: int = 0
    disagreeing_turns: int = 0
    one_order_turns: int = 0
    """``require_agreement``: turns judged in one order only (no ``judge_both_orders``), so never checked."""
    identical_pairs: int = 0
    short_conversations: int = 0
    cut_conversations: int = 0
    """Whole-conversation SFT: conversations cut after a turn that continued with another reply."""
    notes: list[str] = field(default_factory=list)


def _keep_turn(record: TurnRecord, require_agreement: bool, report: FlattenReport) -> bool:
    if not record.labelled:
        report.unlabelled_turns += 1
        return False
    if require_agreement and record.verdict.agreement is not True:  # None: asked once, agreement unknown
        if record.verdict.agreement is None:
            report.one_order_turns += 1
        else:
            report.disagreeing_turns += 1
        return False
    return True


def _branch_index(record: TurnRecord, branch: Branch) -> int:
    """The candidate a branch trains on; with more than two, the rejected one is the first non-preferred."""
    if branch == "preferred":
        return record.verdict.preferred
    return next(c.index for c in record.candidates if c.index != record.verdict.preferred)


def _reply(record: TurnRecord, index: int) -> str:
    return next(c.text for c in record.candidates if c.index == index)


def path_turns(
    conversations: dict[str, Sequence[TurnRecord]], min_turns: int = 1, report: FlattenReport | None = None
) -> Iterator[tuple[str, list[Message], TurnRecord]]:
    """(conversation, prompt, record) for every turn in order; ``prompt`` is the path the conversation
    actually took up to and including that turn's user message. Conversations with fewer than
    ``min_turns`` turns are skipped and counted."""
    for cid, records in conversations.items():
        records = sorted(records, key=lambda r: r.turn)
        if len(records) < min_turns:
            if report is not None:
                report.short_conversations += 1
            continue
        history: list[Message] = []
        for record in records:
            prompt = [*history, {"role": "user", "content": record.user_message}]
            yield cid, prompt, record
            history = [*prompt, {"role": "assistant", "content": record.candidates[record.continued].text}]


def sft_rows(
    conversations: dict[str, Sequence[TurnRecord]],
    branch: Branch = "preferred",
    min_turns: int = 1,
    require_agreement: bool = False,
    report: FlattenReport | None = None,
) -> list[dict[str, Any]]:
    """One prompt-completion row per labelled turn, in trl's conversational format.

    ``prompt`` is the path the conversation actually took up to and including turn t's user message
    (so it holds the replies that really continued it, rejected ones included); ``completion`` is turn
    t's ``preferred`` reply (``rejected``: the paper's control). trl puts the loss on the completion.
    """
    report = report if report is not None else FlattenReport()
    rows = []
    for cid, prompt, record in path_turns(conversations, min_turns, report):
        if _keep_turn(record, require_agreement, report):
            reply = _reply(record, _branch_index(record, branch))
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": reply}],
                         "conversation_id": cid, "turn": record.turn})  # fmt: skip
    report.rows, report.conversations = len(rows), len({r["conversation_id"] for r in rows})
    return rows


def conversation_rows(
    conversations: dict[str, Sequence[TurnRecord]],
    branch: Branch = "preferred",
    min_turns: int = 1,
    require_agreement: bool = False,
    report: FlattenReport | None = None,
) -> list[dict[str, Any]]:
    """One ``{"messages": [...]}`` row per conversation, kept only as far as it is coherent.

    Each user message must answer the reply the row shows before it, so a row ends at the first turn
    whose conversation continued with a reply other than ``branch``'s (that turn is included: its user
    message still answered a reply in the row), or before a turn without a usable verdict.
    Conversations left with fewer than ``min_turns`` turns are skipped.
    """
    report = report if report is not None else FlattenReport()
    rows = []
    for cid, records in conversations.items():
        messages: list[Message] = []
        turns = 0
        for record in sorted(records, key=lambda r: r.turn):
            if not _keep_turn(record, require_agreement, report):
                break
            index = _branch_index(record, branch)
            messages += [{"role": "user", "content": record.user_message},
                         {"role": "assistant", "content": _reply(record, index)}]  # fmt: skip
            turns += 1
            if record.continued != index and record.turn < max(r.turn for r in records):
                report.cut_conversations += 1
                break
        if turns < max(min_turns, 1):
            report.short_conversations += 1
            continue
        rows.append({"messages": messages, "conversation_id": cid, "turns": turns})
    report.rows, report.conversations = len(rows), len(rows)
    return rows


def dpo_rows(
    conversations: dict[str, Sequence[TurnRecord]],
    min_turns: int = 1,
    require_agreement: bool = False,
    report: FlattenReport | None = None,
) -> list[dict[str, Any]]:
    """One row per labelled turn (per rejected candidate when there are more than two), in trl's
    conversational explicit-prompt format. ``prompt`` is the path the conversation actually took up to
    and including that turn's user message."""
    report = report if report is not None else FlattenReport()
    rows = []
    for cid, prompt, record in path_turns(conversations, min_turns, report):
        if not _keep_turn(record, require_agreement, report):
            continue
        chosen = _reply(record, record.verdict.preferred)
        for candidate in record.candidates:
            if candidate.index == record.verdict.preferred:
                continue
            if candidate.text.strip() == chosen.strip():
                report.identical_pairs += 1  # nothing to learn from identical replies
                continue
            rows.append({
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": candidate.text}],
                "conversation_id": cid,
                "turn": record.turn,
            })  # fmt: skip
    report.rows, report.conversations = len(rows), len({r["conversation_id"] for r in rows})
    return rows


def tree_rows(trees: Iterable[ConversationTree]) -> list[dict[str, Any]]:
    """One row per node with ``parent_id`` (like OpenAssistant's tree exports): nothing judged is lost."""
    rows = []
    for tree in trees:
        for node, attrs in tree.graph.nodes(data=True):
            parents = list(tree.graph.predecessors(node))
            rows.append({
                "id": node, "parent_id": parents[0] if parents else None, "conversation_id": tree.conversation_id,
                "role": attrs["role"], "turn": attrs["turn"], "text": attrs["text"], "label": attrs["label"],
                "chosen": attrs["chosen"], "data": attrs["data"],
            })  # fmt: skip
    return rows


def trees_from_rows(rows: Iterable[dict[str, Any]]) -> list[ConversationTree]:
    """Inverse of :func:`tree_rows`."""
    import networkx as nx

    graphs: dict[str, nx.DiGraph] = {}
    pending_edges = []
    for row in rows:
        graph = graphs.setdefault(row["conversation_id"], nx.DiGraph(conversation_id=row["conversation_id"]))
        graph.add_node(row["id"], role=row["role"], turn=row["turn"], text=row["text"], label=row["label"],
                       chosen=row["chosen"], data=row["data"])  # fmt: skip
        if row["parent_id"] is not None:
            pending_edges.append((row["conversation_id"], row["parent_id"], row["id"], row["chosen"]))
    for cid, parent, child, chosen in pending_edges:
        graphs[cid].add_edge(parent, child, continued=bool(chosen))
    return [ConversationTree(g) for g in graphs.values()]


def split_by_conversation(
    rows: Sequence[dict[str, Any]], val_fraction: float, seed: int = 0, same: Mapping[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train/validation split by conversation, never by turn, so no conversation leaks across.

    ``same`` maps a row's ``conversation_id`` to the conversation it is (an export key, the database id a tree
    row keeps, a same-seed rerun's copy): those go to one side together. Its conversations are drawn from
    whether or not they gave rows, so exports of one set of conversations (SFT, DPO, trees) hold out the
    same ones even where a conversation gave one kind no rows.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    same = same or {}
    unit = {cid: same.get(cid, cid) for cid in {row["conversation_id"] for row in rows}}
    units = sorted({*unit.values(), *same.values()})
    random.Random(seed).shuffle(units)
    n_val = round(len(units) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(units) > 1:
        n_val = 1
    held_out = set(units[:n_val])
    return [r for r in rows if unit[r["conversation_id"]] not in held_out], [
        r for r in rows if unit[r["conversation_id"]] in held_out
    ]


def data_hash(rows: Iterable[dict[str, Any]]) -> str:
    """Content hash of training rows, recorded with every adapter."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()[:16]
