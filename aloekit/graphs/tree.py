"""A conversation as a networkx tree: user turns on the spine, each with its candidate replies as
children, one of which continues the conversation."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

from aloekit.graphs.records import TurnRecord
from aloekit.personas.models import PersonaPair


def root_id(conversation_id: str) -> str:
    """Id of a conversation's root node (the persona)."""
    return f"{conversation_id}/root"


def user_node_id(conversation_id: str, turn: int) -> str:
    """Id of turn ``turn``'s user message."""
    return f"{conversation_id}/t{turn}/user"


def candidate_node_id(conversation_id: str, turn: int, index: int) -> str:
    """Id of candidate ``index`` of turn ``turn``."""
    return f"{conversation_id}/t{turn}/c{index}"


def turn_nodes(record: TurnRecord, parent_id: str) -> list[dict[str, Any]]:
    """The nodes one turn adds (its user message and candidates), with deterministic ids and full data."""
    cid, turn = record.conversation_id, record.turn
    user_id = user_node_id(cid, turn)
    nodes = [{
        "id": user_id, "parent_id": parent_id, "role": "user", "turn": turn, "text": record.user_message,
        "label": None, "chosen": True,
        "data": {"calls": [c.model_dump() for c in record.user_calls], "inducer_output": record.inducer_text,
                 "hint": record.hint, "inducer_calls": [c.model_dump() for c in record.inducer_calls],
                 "judge_verdict": record.verdict.preferred, "judge_order": record.verdict.order,
                 "judge_raw": record.verdict.raw, "judge_retried": record.verdict.retried,
                 "judge_agreement": record.verdict.agreement,
                 "judge_calls": [c.model_dump() for c in record.judge_calls]},
    }]  # fmt: skip
    for cand in record.candidates:
        calls = [c.model_dump() for c in cand.calls]
        nodes.append({
            "id": candidate_node_id(cid, turn, cand.index), "parent_id": user_id, "role": "assistant", "turn": turn,
            "text": cand.text, "label": record.label(cand.index), "chosen": cand.index == record.continued,
            "data": {"responder": cand.responder, "backend": cand.backend, "used_hint": cand.used_hint,
                     "hint": record.hint if cand.used_hint else None, "calls": calls,
                     "prompt_tokens": sum(c["prompt_tokens"] for c in calls),
                     "completion_tokens": sum(c["completion_tokens"] for c in calls),
                     "latency_s": round(sum(c["latency_s"] for c in calls), 4),
                     "judge_verdict": record.verdict.preferred, "judge_order": record.verdict.order,
                     **({"reward": cand.reward} if cand.reward is not None else {})},
        })  # fmt: skip
    return nodes


class ConversationTree:
    """A networkx ``DiGraph`` built from a conversation's turn records.

    Node attributes: ``role`` (persona/user/assistant), ``text``, ``turn``, ``label``
    (preferred/rejected/None), ``chosen`` and ``data`` (inducer output, verdict, order, raw calls,
    usage, latency). Edge attribute ``continued`` marks the path the conversation actually took.
    """

    def __init__(self, graph: nx.DiGraph) -> None:
        self.graph = graph

    @classmethod
    def from_records(
        cls, conversation_id: str, persona: PersonaPair | None, records: Iterable[TurnRecord]
    ) -> ConversationTree:
        """Build the tree of a conversation from its turn records, in turn order."""
        graph = nx.DiGraph(conversation_id=conversation_id)
        root = root_id(conversation_id)
        graph.add_node(root, role="persona", turn=0, text=persona.describe() if persona else "", label=None,
                       chosen=True, data={"persona": persona.model_dump() if persona else None})  # fmt: skip
        parent = root
        for record in sorted(records, key=lambda r: r.turn):
            for node in turn_nodes(record, parent):
                node_id, parent_id = node.pop("id"), node.pop("parent_id")
                graph.add_node(node_id, **node)
                graph.add_edge(parent_id, node_id, continued=bool(node["chosen"]))
            parent = candidate_node_id(conversation_id, record.turn, record.continued)
        return cls(graph)

    @classmethod
    def from_nodes(
        cls, conversation_id: str, rows: Iterable[Mapping[str, Any]], kind: str | None = None
    ) -> ConversationTree:
        """Build the tree from stored ``tree_nodes`` rows (an evaluation's only tree form), scores included."""
        graph = nx.DiGraph(conversation_id=conversation_id)
        if kind is not None:
            graph.graph["kind"] = kind
        rows = list(rows)
        for r in rows:
            graph.add_node(r["id"], role=r["role"], turn=r["turn"], text=r["text"] or "", label=r["label"],
                           chosen=bool(r["chosen"]), data=_node_data(r["data"]))  # fmt: skip
        for r in rows:
            if r["parent_id"] and r["parent_id"] in graph:
                graph.add_edge(r["parent_id"], r["id"], continued=bool(r["chosen"]))
        return cls(graph)

    @property
    def conversation_id(self) -> str:
        """The conversation's id."""
        return self.graph.graph["conversation_id"]

    @property
    def kind(self) -> str:
        """``simulation`` (candidates, a judge's verdict) or ``evaluation`` (one scored reply per turn)."""
        return self.graph.graph.get("kind", "simulation")

    def head(self, node: str) -> str:
        """A node's short tag: its role, a candidate's label, or an evaluated reply's score."""
        attrs = self.graph.nodes[node]
        if attrs["role"] != "assistant":
            return str(attrs["role"])
        if self.kind == "evaluation":
            return f"reply, {score_text((attrs.get('data') or {}).get('score'))}"
        return str(attrs["label"] or "unlabelled")

    def continued_path(self) -> list[str]:
        """Node ids along the branch the conversation took, root first."""
        path = [root_id(self.conversation_id)]
        while True:
            nxt = [v for v in self.graph.successors(path[-1]) if self.graph.edges[path[-1], v]["continued"]]
            if not nxt:
                return path
            path.append(nxt[0])

    def to_json(self) -> dict[str, Any]:
        """networkx node-link data (``edges="edges"`` named explicitly: the default changed across 3.x)."""
        return nx.node_link_data(self.graph, edges="edges")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConversationTree:
        """Inverse of :meth:`to_json`."""
        return cls(nx.node_link_graph(data, directed=True, edges="edges"))

    def to_mermaid(self, width: int = 60) -> str:
        """Mermaid flowchart, preferred/rejected/user nodes styled, the continued path drawn thick."""
        ids = {node: f"n{i}" for i, node in enumerate(self.graph.nodes)}
        lines = ["flowchart TD"]
        for node, attrs in self.graph.nodes(data=True):
            label = mermaid_text(f"{self.head(node)}: {_short(attrs['text'], width)}")
            lines.append(f'    {ids[node]}["{label}"]')
        for u, v, attrs in self.graph.edges(data=True):
            lines.append(f"    {ids[u]} {'==>' if attrs['continued'] else '-->'} {ids[v]}")
        for cls_name, color in (("preferred", "#c8f7c5"), ("rejected", "#f7c5c5"), ("user", "#c5dcf7")):
            members = [ids[n] for n, a in self.graph.nodes(data=True) if (a["label"] or a["role"]) == cls_name]
            if members:
                lines.append(f"    classDef {cls_name} fill:{color}")
                lines.append(f"    class {','.join(members)} {cls_name}")
        return "\n".join(lines) + "\n"

    def to_dot(self, width: int = 60) -> str:
        """Graphviz DOT with the same styling: UTF-8 text, every string quoted with DOT's own escaping."""
        colors = {"preferred": "palegreen", "rejected": "lightpink", "user": "lightblue", "persona": "lightgrey"}
        lines = [f"digraph {dot_string(self.conversation_id)} {{", '  graph [charset="UTF-8"];',
                 "  node [shape=box, style=filled];"]  # fmt: skip
        for node, attrs in self.graph.nodes(data=True):
            kind = attrs["label"] or attrs["role"]
            label = dot_string(f"{self.head(node)}: {_short(attrs['text'], width)}")
            lines.append(f"  {dot_string(node)} [label={label}, fillcolor={colors.get(kind, 'white')}];")
        for u, v, attrs in self.graph.edges(data=True):
            style = " [penwidth=3]" if attrs["continued"] else ""
            lines.append(f"  {dot_string(u)} -> {dot_string(v)}{style};")
        return "\n".join(lines) + "\n}\n"

    def transcript(self, width: int = 200) -> str:
        """Readable text: each user turn and its candidates, labelled, continued one marked (evaluation: scores)."""
        out = []
        for node in self.continued_path()[1:]:
            attrs = self.graph.nodes[node]
            if attrs["role"] != "user":
                continue
            out.append(f"[turn {attrs['turn']}] USER: {attrs['text']}")
            if attrs["data"].get("hint"):
                out.append(f"    inducer: {_short(attrs['data']['hint'], width)}")
            for child in sorted(self.graph.successors(node)):
                c = self.graph.nodes[child]
                mark = "->" if c["chosen"] else "  "
                tag = self.head(child) + (", hint" if c["data"].get("used_hint") else "")
                out.append(f"  {mark} [{tag}] {_short(c['text'], width)}")
        if self.kind == "evaluation":
            out.append(self.score_summary())
        return "\n".join(out)

    def scores(self) -> dict[int, float | None]:
        """An evaluation's score per turn (None: unscored), from its reply nodes."""
        replies = [a for _, a in self.graph.nodes(data=True) if a["role"] == "assistant"]
        return {int(a["turn"]): _number((a.get("data") or {}).get("score")) for a in sorted(replies, key=_turn)}

    def score_summary(self) -> str:
        """One line: mean score over the scored turns, and how many were left unscored."""
        scores = list(self.scores().values())
        values = [v for v in scores if v is not None]
        if not values:
            return f"no turn scored, {len(scores)} unscored"
        unscored = len(scores) - len(values)
        return f"mean score {sum(values) / len(values):.2f} over {len(values)} scored turns, {unscored} unscored"


def _turn(attrs: dict[str, Any]) -> int:
    return int(attrs["turn"])


def score_text(value: Any) -> str:
    """A judge score for labels and transcripts: two decimals (expected scores are fractions), or "unscored"."""
    number = _number(value)
    return "unscored" if number is None else f"score {number:.2f}"


def _number(value: Any) -> float | None:
    """A stored score as a float; None for anything else (a damaged row must not break a transcript)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _node_data(raw: Any) -> dict[str, Any]:
    """A node's stored ``data`` JSON; {} when it is damaged, so one bad row does not hide the whole tree."""
    if isinstance(raw, dict):
        return raw
    try:
        data = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _printable(text: str) -> str:
    """``text`` that encodes as UTF-8, control characters (bar tabs and line breaks) as U+FFFD."""
    # Graphviz rejects or garbles control bytes, and a lone surrogate cannot be written as UTF-8 at all.
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else "\ufffd" for ch in text)


def dot_string(text: str) -> str:
    """``text`` as a quoted DOT string: ``\\`` and ``"`` escaped, line breaks as ``\\n``, non-ASCII as UTF-8."""
    # Not json.dumps: Graphviz prints its \uXXXX escapes literally. Doubled backslashes also keep a label's
    # text from being read as \N, \G or \l escapes, and a trailing backslash from escaping the closing quote.
    text = _printable(text).replace("\\", "\\\\").replace('"', '\\"').replace("\t", " ").replace("\n", "\\n")
    return f'"{text}"'


# Mermaid reads "#name;" and "#123;" as entity codes and renders labels as HTML; these characters are
# written as numeric codes, so a label always shows the text itself and never markup.
_MERMAID_CODED = frozenset('"#&<>`')


def mermaid_text(text: str) -> str:
    """``text`` for a double-quoted Mermaid label: one line, ``" # & < >`` and backticks as ``#NN;`` codes."""
    text = " ".join(_printable(text).split())
    return "".join(f"#{ord(ch)};" if ch in _MERMAID_CODED else ch for ch in text)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"
