"""A conversation as a networkx tree: user turns on the spine, each with its candidate replies as
children, one of which continues the conversation."""

from __future__ import annotations

import json
from collections.abc import Iterable
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
                     "judge_verdict": record.verdict.preferred, "judge_order": record.verdict.order},
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

    @property
    def conversation_id(self) -> str:
        """The conversation's id."""
        return self.graph.graph["conversation_id"]

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
            head = attrs["role"] if attrs["role"] != "assistant" else f"{attrs['label'] or 'unlabelled'}"
            text = _short(attrs["text"], width).replace('"', "#quot;")
            lines.append(f'    {ids[node]}["{head}: {text}"]')
        for u, v, attrs in self.graph.edges(data=True):
            lines.append(f"    {ids[u]} {'==>' if attrs['continued'] else '-->'} {ids[v]}")
        for cls_name, color in (("preferred", "#c8f7c5"), ("rejected", "#f7c5c5"), ("user", "#c5dcf7")):
            members = [ids[n] for n, a in self.graph.nodes(data=True) if (a["label"] or a["role"]) == cls_name]
            if members:
                lines.append(f"    classDef {cls_name} fill:{color}")
                lines.append(f"    class {','.join(members)} {cls_name}")
        return "\n".join(lines) + "\n"

    def to_dot(self, width: int = 60) -> str:
        """Graphviz DOT with the same styling."""
        colors = {"preferred": "palegreen", "rejected": "lightpink", "user": "lightblue", "persona": "lightgrey"}
        lines = [f"digraph {json.dumps(self.conversation_id)} {{", "  node [shape=box, style=filled];"]
        for node, attrs in self.graph.nodes(data=True):
            kind = attrs["label"] or attrs["role"]
            label = json.dumps(f"{kind}: {_short(attrs['text'], width)}")
            lines.append(f"  {json.dumps(node)} [label={label}, fillcolor={colors.get(kind, 'white')}];")
        for u, v, attrs in self.graph.edges(data=True):
            style = " [penwidth=3]" if attrs["continued"] else ""
            lines.append(f"  {json.dumps(u)} -> {json.dumps(v)}{style};")
        return "\n".join(lines) + "\n}\n"

    def transcript(self, width: int = 200) -> str:
        """Readable text: each user turn, then every candidate with its label, the continued one marked."""
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
                tag = f"{c['label'] or 'unlabelled'}{', hint' if c['data'].get('used_hint') else ''}"
                out.append(f"  {mark} [{tag}] {_short(c['text'], width)}")
        return "\n".join(out)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"
