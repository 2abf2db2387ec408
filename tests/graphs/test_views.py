"""`aloe trees show/export` on evaluation conversations, and the DOT and Mermaid exports' escaping."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from aloekit.cli import cli
from aloekit.evaluation import EvalStore
from aloekit.graphs import TreeStore
from aloekit.graphs.tree import ConversationTree
from aloekit.store import Store
from tests.graphs.scripted import PERSONA
from tests.training.records import record
from tests.viewer.evalruns import TRICKY_REPLY, TRICKY_USER, eval_run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """A database with a finished evaluation run whose turns are full of characters exports must escape."""
    db = tmp_path_factory.mktemp("tree-views") / "aloe.db"
    store = Store(db)
    run = eval_run(store, "tree-views", personas=2, turns=3, user_text=TRICKY_USER, reply_text=TRICKY_REPLY)
    cid = f"{run}-0000"
    records = EvalStore(store).records(cid)
    store.close()
    return {"db": db, "cid": cid, "records": records}


def aloe(db, *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"ALOE_DB": str(db)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


# Evaluation conversations -----------------------------------------------------------------------------


def test_trees_show_gives_the_evaluation_transcript_with_per_turn_scores(evaluated):
    out = aloe(evaluated["db"], "trees", "show", evaluated["cid"])
    assert out.startswith(f"conversation {evaluated['cid']} (evaluation, complete, 3 turns)")
    for r in evaluated["records"]:
        score = "unscored" if r.score.score is None else f"score {r.score.score:.2f}"
        assert f"[turn {r.turn}] USER: {r.user_message}\n" in out
        assert f"  -> [reply, {score}] {' '.join(r.reply.split())}" in out
    scored = [r.score.score for r in evaluated["records"] if r.score.score is not None]
    assert f"mean score {sum(scored) / len(scored):.2f} over {len(scored)} scored turns" in out


def test_trees_export_json_carries_every_turn_and_score(evaluated):
    data = json.loads(aloe(evaluated["db"], "trees", "export", evaluated["cid"], "--format", "json"))
    assert data["graph"]["kind"] == "evaluation"
    nodes = {n["id"]: n for n in data["nodes"]}
    for r in evaluated["records"]:
        user, reply = nodes[f"{evaluated['cid']}/t{r.turn}/user"], nodes[f"{evaluated['cid']}/t{r.turn}/reply"]
        assert (user["text"], reply["text"], reply["data"]["score"]) == (r.user_message, r.reply, r.score.score)
    again = ConversationTree.from_json(data)
    assert again.kind == "evaluation" and len(again.continued_path()) == 1 + 2 * len(evaluated["records"])


def test_trees_export_mermaid_and_dot_show_the_evaluation(evaluated):
    mermaid = aloe(evaluated["db"], "trees", "export", evaluated["cid"], "--format", "mermaid")
    dot = aloe(evaluated["db"], "trees", "export", evaluated["cid"], "--format", "dot")
    labels = [_mermaid_decode(label) for _, label in _mermaid_nodes(mermaid)]
    dot_labels = [label for _, label in _dot_nodes(dot)]
    for r in evaluated["records"]:
        score = "unscored" if r.score.score is None else f"score {r.score.score:.2f}"
        assert any(label.startswith(f"reply, {score}: Caf\u00e9") for label in labels)
        assert any(label.startswith(f"reply, {score}: Caf\u00e9") for label in dot_labels)
    assert sum(label.startswith("user: She said") for label in labels) == len(evaluated["records"])


# DOT ------------------------------------------------------------------------------------------------------

# A quoted DOT string as Graphviz's scanner reads it: a backslash and the character after it are one unit.
DOT_STRING = r'"((?:\\.|[^"\\])*)"'
DOT_LINE = re.compile(
    rf"^(?:digraph {DOT_STRING} \{{|  graph \[charset=\"UTF-8\"\];|  node \[shape=box, style=filled\];"
    rf"|  {DOT_STRING} \[label={DOT_STRING}, fillcolor=\w+\];|  {DOT_STRING} -> {DOT_STRING}(?: \[penwidth=3\])?;|\}})$"
)


def _dot_unescape(raw: str) -> str:
    """A label's text as Graphviz shows it; fails on any escape other than \\\\, \\" and \\n."""
    out, i = [], 0
    while i < len(raw):
        if raw[i] == "\\":
            pair = raw[i : i + 2]
            assert pair in ("\\\\", '\\"', "\\n"), f"unexpected escape {pair!r} in {raw!r}"
            out.append({"\\\\": "\\", '\\"': '"', "\\n": "\n"}[pair])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def _dot_nodes(dot: str) -> list[tuple[str, str]]:
    """(node id, decoded label) for every node statement, checking every line's syntax on the way."""
    nodes = []
    for line in dot.rstrip("\n").split("\n"):
        assert DOT_LINE.match(line), f"not a DOT line this exporter writes: {line!r}"
        if match := re.fullmatch(rf"  {DOT_STRING} \[label={DOT_STRING}, fillcolor=\w+\];", line):
            nodes.append((match.group(1), _dot_unescape(match.group(2))))
    return nodes


def tricky_tree() -> ConversationTree:
    """A simulation tree whose texts hold quotes, backslashes, line breaks, markup and non-ASCII."""
    turn = record("conv \"q\" \\", 1, TRICKY_USER, [TRICKY_REPLY, "plain\ttab\r\nCRLF \x07bell"], preferred=0,
                  continued=1)  # fmt: skip
    return ConversationTree.from_records('conv "q" \\', PERSONA, [turn])


def expected_labels(tree: ConversationTree, width: int) -> set[str]:
    def short(text: str) -> str:
        text = " ".join(text.replace("\x07", "\ufffd").split())
        return text if len(text) <= width else text[: width - 1] + "\u2026"

    return {f"{a['label'] or a['role']}: {short(a['text'])}" for _, a in tree.graph.nodes(data=True)}


@pytest.mark.parametrize("width", [60, 500])
def test_dot_output_is_utf8_with_dot_string_escaping(width):
    tree = tricky_tree()
    dot = tree.to_dot(width=width)
    dot.encode("utf-8")  # no lone surrogates
    assert "\\u" not in dot.replace("\\\\", "") and "\u2019" in dot and "\u201c" in dot  # UTF-8, not \u2019
    nodes = _dot_nodes(dot)
    assert {label for _, label in nodes} == expected_labels(tree, width)
    assert {_dot_unescape(node_id) for node_id, _ in nodes} == set(tree.graph.nodes)
    if width == 500:  # the user's text ends in a backslash: it must not escape the closing quote
        assert any(label.endswith("end\\") for _, label in nodes)


def test_dot_renders_with_graphviz(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz to run this check)")
    tree = tricky_tree()
    dot = tree.to_dot(width=500)
    done = subprocess.run(["dot", "-Tsvg"], input=dot.encode("utf-8"), capture_output=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode()
    svg = ET.fromstring(done.stdout)
    ns = {"svg": "http://www.w3.org/2000/svg"}
    shown = {"".join(t.text or "" for t in g.findall("svg:text", ns)) for g in svg.iter(f"{{{ns['svg']}}}g")
             if g.get("class") == "node"}  # fmt: skip
    assert shown == expected_labels(tree, 500)  # every label exactly as written, one line each
    assert sum(g.get("class") == "edge" for g in svg.iter(f"{{{ns['svg']}}}g")) == tree.graph.number_of_edges()


# Mermaid --------------------------------------------------------------------------------------------------

MERMAID_NODE = re.compile(r'^    (n\d+)\["([^"]*)"\]$')


def _mermaid_nodes(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for line in text.splitlines() if (m := MERMAID_NODE.match(line))]


def _mermaid_decode(label: str) -> str:
    return re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), label)


def test_mermaid_labels_are_entity_coded():
    tree = tricky_tree()
    text = tree.to_mermaid(width=500)
    lines = text.splitlines()
    nodes = _mermaid_nodes(text)
    assert lines[0] == "flowchart TD" and len(nodes) == tree.graph.number_of_nodes()
    for _, label in nodes:
        # Nothing Mermaid would read as markup, an entity or the end of the label is left bare.
        assert not re.search(r'[<>&`"]', label) and not re.search(r"#(?!\d+;)", label), label
    assert {_mermaid_decode(label) for _, label in nodes} == expected_labels(tree, 500)
    others = [line for line in lines[1:] if not MERMAID_NODE.match(line)]
    assert all(re.fullmatch(r"    (n\d+ (==>|-->) n\d+|classDef \w+ fill:#[0-9a-f]{6}|class [n\d,]+ \w+)", line)
               for line in others), others  # fmt: skip


def test_tree_store_reads_an_evaluation_from_its_nodes(evaluated):
    store = Store(evaluated["db"], readonly=True)
    tree = TreeStore(store).tree(evaluated["cid"])
    assert tree.kind == "evaluation"
    assert tree.scores() == {r.turn: r.score.score for r in evaluated["records"]}
