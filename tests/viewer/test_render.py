"""The viewer's pages as HTML: verdicts in words, the hint badge, judge agreement, raw prompts with their
line breaks, failed runs' reasons and full ids, all still escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from aloekit.agents.base import CallRecord
from aloekit.agents.judge import Verdict
from aloekit.graphs import TreeStore
from aloekit.graphs.records import CandidateRecord, TurnRecord
from aloekit.store import Store
from aloekit.viewer.render import run_page, runs_page, tree_page
from tests.graphs.scripted import PERSONA
from tests.helpers import hold_lease

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="alert(1)">'
PROMPT = "You are a helpful assistant.\nKeep it short.\n\nUser: hi"


def turn(cid: str, n: int, preferred: int, order: list[int], agreement: bool | None) -> TurnRecord:
    """Candidate 0 is plain (responder ``base``), candidate 1 hinted (``tailored``)."""
    call = [CallRecord(backend="scripted:x", messages=[{"role": "system", "content": PROMPT}], raw="Message 2\nok")]
    candidates = [CandidateRecord(index=i, responder=name, backend="scripted:x", used_hint=i == 1, calls=call,
                                  text=f"{name} reply {n}") for i, name in enumerate(("base", "tailored"))]  # fmt: skip
    return TurnRecord(conversation_id=cid, turn=n, user_message=f"user message {n}", user_calls=call,
                      hint="She bakes bread.", inducer_text="Profile: bakes", inducer_calls=call, candidates=candidates,
                      verdict=Verdict(preferred=preferred, order=order, raw=["Message 2"], agreement=agreement),
                      judge_calls=call, continued=max(preferred, 0))  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    db = tmp_path_factory.mktemp("viewer-render") / "aloe.db"
    store = Store(db)
    run = store.start_run("aloe simulate", {}, 0)
    [cid] = TreeStore(store).create_conversations(run, [PERSONA], 4)
    trees = TreeStore(store)
    trees.save_turn(turn(cid, 1, preferred=1, order=[0, 1], agreement=True))  # hinted, shown second
    trees.save_turn(turn(cid, 2, preferred=0, order=[0, 1], agreement=False))  # base, shown first
    trees.save_turn(turn(cid, 3, preferred=-1, order=[1, 0], agreement=None))  # no verdict
    store.finish_run(run, "failed", error=f"every conversation failed: {PAYLOAD}\nsecond line")
    return {"store": store, "run": run, "cid": cid}


def _node(html: str, node_id: str) -> str:
    """The markup of one node's ``<details>``, up to the next node."""
    start = html.index(f'id="{node_id}"')
    end = html.find('<details class="node', start)
    return html[start : end if end != -1 else len(html)]


class _Text(HTMLParser):
    """The page's text as a browser would put it in the DOM (entities decoded, tags dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def text_of(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return "".join(parser.parts)


def test_verdict_in_words_with_judge_agreement(data):
    html, _ = tree_page(data["store"], data["cid"])
    assert "order shown" not in html
    first, second, third = (_node(html, f"{data['cid']}/t{n}/user") for n in (1, 2, 3))
    assert "<dt>judge verdict</dt><dd>preferred: the hinted reply, shown second</dd>" in first
    assert "<dt>judge agreement</dt><dd>agreed in both orders</dd>" in first
    assert "<dt>judge verdict</dt><dd>preferred: base, shown first</dd>" in second
    assert "<dt>judge agreement</dt><dd>disagreed" in second
    assert "no verdict: the judge&#x27;s answer could not be read" in third
    assert "<dt>judge agreement</dt><dd>asked in one order only</dd>" in third
    # Each candidate says how the judge saw it.
    assert "<dt>judge</dt><dd>preferred, shown second</dd>" in _node(html, f"{data['cid']}/t1/c1")
    assert "<dt>judge</dt><dd>rejected, shown first</dd>" in _node(html, f"{data['cid']}/t1/c0")


def test_hint_badge_is_on_the_hinted_candidate_summary(data):
    html, _ = tree_page(data["store"], data["cid"])
    for n in (1, 2, 3):
        hinted, plain = _node(html, f"{data['cid']}/t{n}/c1"), _node(html, f"{data['cid']}/t{n}/c0")
        summary = hinted[: hinted.index("</summary>")]
        assert '<span class="badge hint"' in summary  # in the summary: visible without expanding the node
        assert "badge hint" not in plain
        assert "<dt>hint</dt><dd>She bakes bread.</dd>" in hinted


def test_raw_prompts_keep_their_line_breaks_as_escaped_text(data):
    html, _ = tree_page(data["store"], data["cid"])
    assert "\\n" not in html  # no JSON-style escapes anywhere on the page
    assert f'<div class="text">{PROMPT}</div>' in html  # real line breaks, shown by white-space: pre-wrap
    assert re.search(r"dd,\.text\{white-space:pre-wrap\}", html)
    for section in ("raw calls", "inducer calls", "judge calls"):
        assert f"<summary>{section}</summary>" in _node(html, f"{data['cid']}/t1/user")


def test_failed_run_reason_and_full_ids_on_index_and_run_page(data):
    error = f"every conversation failed: {PAYLOAD}\nsecond line"
    for html, _ in (runs_page(data["store"]), run_page(data["store"], data["run"])):
        assert PAYLOAD not in html and html.count("<script") == 1  # escaped; the only script is ours
        assert error in text_of(html)  # shown in full, line break included
        assert f">{data['run']}</a>" in html or f"Run {data['run']}<" in html
    run_html, _ = run_page(data["store"], data["run"])
    assert 'id="run-error"' in run_html
    assert f'<td class="id"><a href="/trees/{data["cid"]}">{data["cid"]}</a></td>' in run_html
    index, _ = runs_page(data["store"])
    assert f'<td class="id"><a href="/runs/{data["run"]}">{data["run"]}</a></td>' in index
    assert ".id{white-space:nowrap}" in index


def test_pages_keep_their_csp_nonce(data):
    for html, csp in (runs_page(data["store"]), run_page(data["store"], data["run"]),
                      tree_page(data["store"], data["cid"])):  # fmt: skip
        nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
        assert f'<script nonce="{nonce}">' in html and f'<style nonce="{nonce}">' in html


def test_the_runs_page_names_every_kind_of_run_and_its_backends(tmp_path):
    from aloekit.store import Store

    store = Store(tmp_path / "aloe.db")
    grpo = {"base": "local:smollm2", "user": {"backend": "openai:u"}, "judge": {"backend": "openai:j"},
            "profile": {"backend": "openai:p"}}  # fmt: skip
    store.start_run("aloe train grpo", {"grpo": grpo}, 0)
    store.start_run("aloe train sft", {"train": {"method": "sft"}}, 0)
    rows = re.findall(r"<tr><td class=\"id\">.*?</tr>", runs_page(store)[0])
    kinds = {re.search(r"<code>aloe train (\w+)</code>", row).group(1): row for row in rows}
    assert "<td>online RL (GRPO)</td>" in kinds["grpo"] and "<td>training</td>" in kinds["sft"]
    for role, spec in (
        ("policy", "local:smollm2"),
        ("user", "openai:u"),
        ("judge", "openai:j"),
        ("profile", "openai:p"),
    ):
        assert f"{role}: <code>{spec}</code>" in kinds["grpo"]


def test_a_run_whose_process_died_shows_interrupted_with_why_and_the_database_is_left_as_is(tmp_path):
    """The viewer only reads: a run left ``running`` by a SIGKILLed process is shown as ``aloe runs list`` would
    record it."""
    store = Store(tmp_path / "aloe.db")
    run = store.start_run("aloe simulate", {}, 0)
    [cid] = TreeStore(store).create_conversations(run, [PERSONA], 4)
    TreeStore(store).set_status(cid, "running")
    dead = hold_lease(store, run)  # by a process that has ended
    index, page = runs_page(store)[0], run_page(store, run)[0]
    for html in (index, page):
        assert "interrupted" in html and f"its process ({dead} on" in text_of(html)
    assert "1 incomplete" in index and "<td>0/4</td><td>incomplete" in page
    assert store.conn.execute("SELECT status FROM runs").fetchone()[0] == "running"
    assert store.conn.execute("SELECT status FROM conversations").fetchone()[0] == "running"
