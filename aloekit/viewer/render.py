"""Server-side HTML for the viewer. Every string from the database goes through :func:`esc`; the only
script is ours, allowed by a per-page nonce in the Content-Security-Policy, so injected markup can
neither render as HTML nor run."""

from __future__ import annotations

import html
import json
import math
import secrets
from typing import Any

from aloekit.graphs.storage import TreeStore
from aloekit.graphs.tree import ConversationTree
from aloekit.store import Store, run_kind, stored_config

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7fb}
header{background:#27304a;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:16px 22px;max-width:1200px}table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #dde1ea;padding:5px 8px;text-align:left;vertical-align:top}th{background:#eef1f7}
.persona{background:#fff;border:1px solid #dde1ea;padding:10px 14px;margin-bottom:14px;white-space:pre-wrap}
.legend span{display:inline-block;padding:1px 8px;margin-right:8px;border-radius:4px}
ol.spine{list-style:none;padding:0}li.turn{margin:0 0 18px;padding:8px;border-left:4px solid #b9c3d8}
li.turn:focus{outline:3px solid #f0b400}.candidates{display:flex;gap:10px;margin:8px 0 0 28px;flex-wrap:wrap}
details.node{border:1px solid #c6ccd8;border-radius:6px;padding:6px 10px;background:#fff;flex:1;min-width:260px}
details.node summary{cursor:pointer}.node .full{white-space:pre-wrap;margin:6px 0}
.node.user,.legend .user{background:#dbe8fb}.node.preferred,.legend .preferred{background:#d6f5d2}
.node.rejected,.legend .rejected{background:#f9d6d6}.node.unlabelled,.legend .unlabelled{background:#eceff3}
details.continued{border:3px solid #27304a}.badge{font-size:12px;background:#27304a;color:#fff;border-radius:3px;padding:0 5px}
pre{white-space:pre-wrap;background:#f3f4f8;padding:6px;font-size:12px;max-height:320px;overflow:auto}
.score{font-weight:700}.muted{color:#667}svg{background:#fff;border:1px solid #dde1ea}
.id{white-space:nowrap}.error{color:#a01818;white-space:pre-wrap}.badge.hint{background:#9a5b00}
dd,.text{white-space:pre-wrap}.call{border-top:1px solid #dde1ea;padding:4px 0}.msg{margin:4px 0 4px 8px}
"""

SCRIPT = """
const turns=[...document.querySelectorAll('li.turn')];let current=-1;
function go(i){if(!turns.length)return;current=Math.max(0,Math.min(turns.length-1,i));turns[current].focus();
turns[current].scrollIntoView({block:'center'});}
document.addEventListener('keydown',e=>{if(e.target.tagName==='INPUT')return;
if(e.key==='j'||e.key==='ArrowDown'){go(current+1);e.preventDefault();}
else if(e.key==='k'||e.key==='ArrowUp'){go(current-1);e.preventDefault();}
else if(e.key==='e'){document.querySelectorAll('details').forEach(d=>d.open=true);}
else if(e.key==='c'){document.querySelectorAll('details.node').forEach(d=>d.open=false);}});
"""


def esc(value: Any) -> str:
    """HTML-escape anything (quotes included), so database text is always shown as text."""
    return html.escape("" if value is None else str(value), quote=True)


def _short(text: str, width: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def page(title: str, body: str, standalone: bool = False) -> tuple[str, str]:
    """A complete page and its Content-Security-Policy (also set as a meta tag, for exported files)."""
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src data:; "
           "base-uri 'none'; form-action 'none'")  # fmt: skip
    nav = "" if standalone else '<header><a href="/">aloekit viewer</a></header>'
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f'<style nonce="{nonce}">{STYLE}</style></head><body>{nav}<main>{body}</main>'
        f'<script nonce="{nonce}">{SCRIPT}</script></body></html>'
    )
    return document, csp


# Runs -------------------------------------------------------------------------------------------------


def _backends(config: dict[str, Any]) -> dict[str, str]:
    try:
        if sim := config.get("simulation_resolved"):
            out = {role: sim[role]["backend"] for role in ("user", "inducer", "judge")}
            out |= {r["name"]: r["backend"] for r in sim["responders"]}
            return out
        if ev := config.get("eval_resolved"):
            out = {"model": ev["model"], "judge": ev["judge"]["backend"]}
            return out | ({"user": ev["user"]["backend"]} if ev["mode"] == "live" else {})
        if grpo := config.get("grpo"):
            out = {"policy": grpo["base"], "user": grpo["user"]["backend"], "judge": grpo["judge"]["backend"]}
            return out | ({"profile": grpo["profile"]["backend"]} if grpo.get("profile") else {})
    except (KeyError, TypeError, AttributeError):  # a config from another aloekit version, or hand-edited
        return {}
    return {}


def runs_page(store: Store) -> tuple[str, str]:
    """All runs: command, status, start, conversation counts, backends per role, tokens."""
    counts: dict[str, dict[str, int]] = {}
    abandoned = store.abandoned_runs()
    for run_id, status, n in store.conn.execute("SELECT run_id, status, COUNT(*) FROM conversations GROUP BY 1, 2"):
        run_counts, shown = counts.setdefault(run_id, {}), _settled(status, run_id in abandoned)
        run_counts[shown] = run_counts.get(shown, 0) + n  # a settled "running" joins "incomplete"
    rows = []
    for run in (_as_ended(run, abandoned) for run in store.list_runs(limit=500)):
        config = stored_config(run["config"])
        kind = run_kind(config) or ""
        backends = "<br>".join(f"{esc(k)}: <code>{esc(v)}</code>" for k, v in _backends(config).items())
        status_counts = ", ".join(f"{n} {esc(s)}" for s, n in sorted(counts.get(run["id"], {}).items()))
        rows.append(
            f'<tr><td class="id"><a href="/runs/{esc(run["id"])}">{esc(run["id"])}</a></td><td>{esc(kind)}</td>'
            f"<td><code>{esc(run['command'])}</code></td><td>{esc(run['status'])}{_error_html(run)}</td>"
            f"<td>{esc(run['started_at'][:19])}</td><td>{status_counts}</td><td>{backends}</td>"
            f"<td>{esc(run['tokens'])}</td></tr>"
        )
    body = ("<h1>Runs</h1><table id=\"runs\"><tr><th>run</th><th>kind</th><th>command</th><th>status</th>"
            "<th>started</th><th>conversations</th><th>backends per role</th><th>tokens</th></tr>"
            + "".join(rows) + "</table>")  # fmt: skip
    return page("aloekit runs", body)


def run_page(store: Store, run_id: str) -> tuple[str, str] | None:
    """One run's conversations: persona, turns, status, preferred/rejected counts, judge flip rate."""
    run = store.get_run(run_id)
    if run is None:
        return None
    abandoned = store.abandoned_runs()
    run = _as_ended(run, abandoned)
    trees = TreeStore(store)
    config = stored_config(run["config"])
    rows = []
    for c in trees.conversations(run_id):
        preferred = rejected = flips = both = 0
        for record in trees.records(c.id):
            if record.labelled:
                preferred += 1
                rejected += len(record.candidates) - 1
            if record.verdict.agreement is not None:
                both += 1
                flips += not record.verdict.agreement
        flip = f"{flips / both:.0%}" if both else "not asked"
        rows.append(
            f'<tr><td class="id"><a href="/trees/{esc(c.id)}">{esc(c.id)}</a></td><td>{esc(_short(c.persona.profile.text, 90))}'
            f'<br><span class="muted">{esc(_short(c.persona.personality.text, 90))}</span></td>'
            f"<td>{c.turns_done}/{c.max_turns}</td><td>{esc(_settled(c.status, run_id in abandoned))}"
            f"{_error_html({'error': c.error})}</td>"
            f"<td>{preferred}</td><td>{rejected}</td><td>{esc(flip)}</td></tr>"
        )
    eval_link = (
        f'<p><a id="eval-link" href="/evals/{esc(run_id)}">evaluation results</a></p>'
        if "eval_resolved" in config
        else ""
    )
    body = (f"<h1>Run {esc(run_id)}</h1><p><code>{esc(run['command'])}</code> &middot; {esc(run['status'])}</p>"
            f"{_error_html(run, 'run-error')}{eval_link}"
            f"{_audits(store, run_id)}"
            "<table id=\"conversations\"><tr><th>conversation</th><th>persona</th><th>turns</th><th>status</th>"
            "<th>preferred</th><th>rejected</th><th>judge flip rate</th></tr>" + "".join(rows) + "</table>")  # fmt: skip
    return page(f"run {run_id}", body)


def _as_ended(run: dict[str, Any], abandoned: dict[str, str]) -> dict[str, Any]:
    """``run`` as ``aloe runs list`` records it once its process is gone without ending it (the viewer only
    reads): ``interrupted``, with why (:meth:`~aloekit.store.Store.abandoned_runs`)."""
    return {**run, "status": "interrupted", "error": abandoned[run["id"]]} if run["id"] in abandoned else run


def _settled(status: str, abandoned: bool) -> str:
    """A conversation's status, ``incomplete`` where it was in progress in an abandoned run (see :func:`_as_ended`)."""
    return "incomplete" if abandoned and status == "running" else status


def _error_html(row: dict[str, Any], element_id: str = "") -> str:
    """Why a run (or conversation) failed, from its ``error`` column, escaped; nothing when there is none."""
    if not row.get("error"):
        return ""
    attr = f' id="{esc(element_id)}"' if element_id else ""
    return f'<div class="error"{attr}>{esc(row["error"])}</div>'


def _audits(store: Store, run_id: str) -> str:
    """The judge audits a run made: verdict, rates, meaning, and each probe kind's score."""
    from aloekit.evaluation.audit import AuditResult

    parts = []
    for row in store.db["judge_audits"].rows_where("run_id = ?", [run_id], order_by="created_at"):
        result = AuditResult(**json.loads(row["result"]))
        kinds = ", ".join(f"{esc(k.replace('_', ' '))} {v['correct']}/{v['trials']}" for k, v in result.by_kind.items())
        parts.append(f'<div class="persona audit"><b>{esc(row["id"])}</b> &middot; {esc(result.stage)} judge '
                     f"<code>{esc(result.judge.get('backend'))}</code> ({esc(result.judge.get('kind'))})<br>"
                     f"{esc(result.summary_line())}<br>{esc(result.plain_words())}<br>"
                     f'<span class="muted">probes: {kinds}</span></div>')  # fmt: skip
    return f'<h2>Judge audits</h2><div id="audits">{"".join(parts)}</div>' if parts else ""


# Trees ------------------------------------------------------------------------------------------------


def _node_class(attrs: dict[str, Any]) -> str:
    if attrs["role"] == "user":
        return "user"
    return attrs["label"] or "unlabelled"


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def _ordinal(position: int) -> str:
    return ORDINALS[position] if 0 <= position < len(ORDINALS) else f"number {position + 1}"


def _candidate_index(node_id: str) -> int | None:
    """A candidate's index from its node id (``.../t3/c1`` is 1); None for any other node."""
    tail = node_id.rsplit("/", 1)[-1]
    return int(tail[1:]) if tail[:1] == "c" and tail[1:].isdigit() else None


def _shown(order: Any, index: int | None) -> str:
    """Where the judge saw a candidate ("shown second"), or "" when the stored order does not say."""
    if index is None or not isinstance(order, list) or index not in order:
        return ""
    return f"shown {_ordinal(order.index(index))}"


def verdict_words(data: dict[str, Any], candidates: dict[int, dict[str, Any]]) -> str:
    """The judge's verdict in words: the reply it preferred (the hinted one, or its responder) and where it was shown."""
    preferred = data.get("judge_verdict")
    if not isinstance(preferred, int) or isinstance(preferred, bool) or preferred < 0:
        return "no verdict: the judge's answer could not be read"
    chosen = candidates.get(preferred) or {}
    who = "the hinted reply" if chosen.get("used_hint") else str(chosen.get("responder") or f"candidate {preferred}")
    where = _shown(data.get("judge_order"), preferred)
    return f"preferred: {who}" + (f", {where}" if where else "")


def agreement_words(agreement: Any) -> str:
    """Whether the judge, asked again with the order reversed, picked the same reply."""
    if agreement is True:
        return "agreed in both orders"
    if agreement is False:
        return "disagreed: with the order reversed it preferred another reply (or gave no verdict)"
    return "asked in one order only"


def _fact(value: Any) -> str:
    """A fact's value as text: lists one item a line, yes/no for booleans."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def _calls_html(calls: Any) -> str:
    """Model calls as readable blocks: each message's role and its text with real line breaks (escaped, pre-wrap)."""
    if not isinstance(calls, list) or not calls:
        return '<p class="muted">none recorded</p>'
    parts = []
    for call in calls:
        call = call if isinstance(call, dict) else {"raw": call}  # a damaged row still shows what it holds
        meta = [str(call.get("backend", "")), f"{call.get('prompt_tokens', 0)} prompt + "
                f"{call.get('completion_tokens', 0)} completion tokens", f"{call.get('latency_s', 0)} s"]  # fmt: skip
        if call.get("cached"):
            meta.append("cached")
        messages = call.get("messages") if isinstance(call.get("messages"), list) else []
        texts = "".join(
            f'<div class="msg"><b>{esc(m.get("role") if isinstance(m, dict) else "message")}</b>'
            f'<div class="text">{esc(m.get("content") if isinstance(m, dict) else m)}</div></div>'
            for m in messages
        )
        held = call.get("option_share")
        share = f" (the options held {held:.0%} of it)" if isinstance(held, int | float) else ""
        distribution = (f'<div class="muted">P(option): {esc(json.dumps(call["distribution"], ensure_ascii=False))}'
                        f"{esc(share)}</div>" if call.get("distribution") else "")  # fmt: skip
        parts.append(f'<div class="call"><div class="muted">{esc(" · ".join(meta))}</div>{texts}'
                     f'<div class="msg reply"><b>answer</b><div class="text">{esc(call.get("raw"))}</div></div>'
                     f"{distribution}</div>")  # fmt: skip
    return "".join(parts)


def _details(
    node_id: str,
    attrs: dict[str, Any],
    extra: str = "",
    is_open: bool = False,
    candidates: dict[int, dict[str, Any]] | None = None,
) -> str:
    kind = _node_class(attrs)
    continued = attrs["role"] == "assistant" and attrs["chosen"]
    data = attrs.get("data") or {}
    facts: list[tuple[str, Any]] = []
    if attrs["role"] == "user" and "judge_verdict" in data:
        facts.append(("inducer output", data.get("inducer_output")))
        facts.append(("judge verdict", verdict_words(data, candidates or {})))
        facts.append(("judge agreement", agreement_words(data.get("judge_agreement"))))
        facts.append(("judge raw", data.get("judge_raw")))
    if attrs["role"] == "assistant":
        facts += [(k, data[k]) for k in ("responder", "backend") if k in data]
        if data.get("used_hint"):
            facts.append(("hint", data.get("hint")))
        if "judge_verdict" in data:
            shown = _shown(data.get("judge_order"), _candidate_index(node_id))
            facts.append(("judge", f"{attrs['label'] or 'no verdict'}" + (f", {shown}" if shown else "")))
        facts += [(name, data[k]) for k, name in (("score", "score"), ("judge_raw", "judge raw"),
                                                  ("prompt_tokens", "prompt tokens"),
                                                  ("completion_tokens", "completion tokens"),
                                                  ("latency_s", "latency (s)")) if k in data]  # fmt: skip
    listed = "".join(f"<dt>{esc(k)}</dt><dd>{esc(_fact(v))}</dd>" for k, v in facts)
    calls = "".join(
        f"<details><summary>{esc(title)}</summary>{_calls_html(data.get(key))}</details>"
        for key, title in (("calls", "raw calls"), ("inducer_calls", "inducer calls"), ("judge_calls", "judge calls"))
        if key == "calls" or data.get(key)
    )
    badge = ' <span class="badge">continued</span>' if continued else ""
    if attrs["role"] == "assistant" and data.get("used_hint"):  # visible without opening the node
        badge += ' <span class="badge hint" title="written with the inducer\'s hint">hint</span>'
    label = "user" if attrs["role"] == "user" else kind
    score = f' <span class="score">score {esc(data["score"])}</span>' if "score" in data else ""
    return (
        f'<details class="node {kind}{" continued" if continued else ""}" id="{esc(node_id)}" data-label="{esc(label)}"'
        f"{' open' if is_open else ''}><summary><b>{esc(label)}</b>{badge}{score} {esc(_short(attrs['text']))}</summary>"
        f'<div class="full">{esc(attrs["text"])}</div>{extra}<dl>{listed}</dl>{calls}</details>'
    )


def tree_body(tree: ConversationTree, title: str) -> str:
    """The tree: user turns down the spine, each with its candidate replies side by side."""
    g = tree.graph
    root = g.nodes[tree.continued_path()[0]]
    items = []
    for node in tree.continued_path()[1:]:
        attrs = g.nodes[node]
        if attrs["role"] != "user":
            continue
        children = sorted(g.successors(node), key=lambda n: n.rsplit("/", 1)[-1])
        by_index = {i: g.nodes[c].get("data") or {} for c in children if (i := _candidate_index(c)) is not None}
        candidates = "".join(_details(child, g.nodes[child]) for child in children)
        items.append(
            f'<li class="turn" tabindex="-1" data-turn="{attrs["turn"]}"><div class="turn-label muted">turn {attrs["turn"]}</div>'
            f'{_details(node, attrs, is_open=True, candidates=by_index)}<div class="candidates">{candidates}</div></li>'
        )
    legend = ('<p class="legend"><span class="user">user</span><span class="preferred">preferred</span>'
              '<span class="rejected">rejected</span><span class="unlabelled">unlabelled</span> thick border: the '
              "branch that continued &middot; hint: written with the inducer's hint &middot; keys: j/k or arrows "
              "move between turns, e expands, c collapses</p>")  # fmt: skip
    return (f"<h1>{esc(title)}</h1><div class=\"persona\">{esc(root['text'])}</div>{legend}"
            f'<ol class="spine">{"".join(items)}</ol>')  # fmt: skip


def tree_page(store: Store, conversation_id: str, standalone: bool = False) -> tuple[str, str] | None:
    """One conversation tree (also the body of ``aloe trees export --format html``)."""
    trees = TreeStore(store)
    if store.conn.execute("SELECT 1 FROM conversations WHERE id = ?", [conversation_id]).fetchone() is None:
        return None
    # The same tree `aloe trees show/export` prints: an evaluation's comes from its stored nodes, with scores.
    tree = trees.tree(conversation_id)
    return page(f"conversation {conversation_id}", tree_body(tree, f"Conversation {conversation_id}"), standalone)


# Evaluations ------------------------------------------------------------------------------------------


def al_svg(
    curves: list[tuple[str, list[float], list[tuple[float, float]]]], width: int = 640, height: int = 300
) -> str:
    """AL(k) curves with CI bands as inline SVG (no external requests, works from file://)."""
    colours = ["#2f6fdf", "#e07b1a", "#2a9d4b", "#c0392b"]
    pad, turns = 40, max((len(c[1]) for c in curves), default=1)

    def x(k: int) -> float:
        return pad + (width - 2 * pad) * ((k - 1) / max(turns - 1, 1))

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * ((v - 1) / 4)

    parts = [f'<svg id="al-curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{width / 2}" y="18" text-anchor="middle">AL(k): mean score at turn k (95% CI)</text>']  # fmt: skip
    for v in range(1, 6):
        parts.append(f'<line x1="{pad}" x2="{width - pad}" y1="{y(v)}" y2="{y(v)}" stroke="#e3e6ee"/>'
                     f'<text x="{pad - 8}" y="{y(v) + 4}" text-anchor="end" font-size="11">{v}</text>')  # fmt: skip
    for k in range(1, turns + 1):
        parts.append(f'<text x="{x(k)}" y="{height - pad + 16}" text-anchor="middle" font-size="11">{k}</text>')
    for i, (name, al, band) in enumerate(curves):
        colour = colours[i % len(colours)]
        points = [(k + 1, v) for k, v in enumerate(al) if not math.isnan(v)]
        ok_band = [(k + 1, lo, hi) for k, (lo, hi) in enumerate(band) if not (math.isnan(lo) or math.isnan(hi))]
        if ok_band:
            poly = [f"{x(k)},{y(hi)}" for k, _, hi in ok_band] + [f"{x(k)},{y(lo)}" for k, lo, _ in reversed(ok_band)]
            parts.append(f'<polygon points="{" ".join(poly)}" fill="{colour}" opacity="0.15"/>')
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(f"{x(k)},{y(v)}" for k, v in points)}"/>')  # fmt: skip
        for k, v in points:
            parts.append(
                f'<circle cx="{x(k)}" cy="{y(v)}" r="4" fill="{colour}"><title>{esc(name)} AL({k}) = {v:.2f}</title></circle>'
            )
        parts.append(f'<text x="{pad + 6}" y="{36 + 14 * i}" fill="{colour}" font-size="12">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def eval_data(store: Store, run_id: str) -> dict[str, Any] | None:
    """The numbers the evaluation page shows: ``aloe report``'s own results (same CIs), or None if not an eval."""
    from aloekit.errors import AloeError
    from aloekit.evaluation.report import run_results

    try:
        # No bootstrap settings of its own: run_results computes the CIs exactly as `aloe report` does.
        return run_results(store, run_id)
    except (AloeError, ValueError):  # not an evaluation run, or its stored config no longer validates
        return None


def eval_page(store: Store, run_id: str) -> tuple[str, str] | None:
    """An evaluation run: AL(k) curve, metrics with CIs, and each persona's transcript with its scores."""
    from aloekit.evaluation.report import audit_sentence, format_interval, format_value, option_share_line, score_notes
    from aloekit.evaluation.task import EvalStore

    result = eval_data(store, run_id)
    if result is None:
        return None
    m, cis, config = result["metrics"], result["cis"], result["config"]
    svg = al_svg([(config.model, m.al, [(c.low, c.high) for c in cis.al])])
    metrics = (f'<table id="metrics"><tr><th>AVG [95% CI]</th><th>IR [95% CI]</th><th>R2 [95% CI]</th><th>N-IR [95% CI]</th>'
               f"<th>N-R2</th><th>unscored</th><th>mode</th></tr><tr><td>{esc(format_interval(cis.avg))}</td>"
               f"<td>{esc(format_interval(cis.ir))}</td><td>{esc(format_interval(cis.r2))}</td><td>{esc(format_interval(cis.n_ir))}</td>"
               f"<td>{esc(format_value(m.n_r2))}</td><td>{m.unscored}</td>"
               f"<td>{esc(config.mode)}, {esc(config.baseline)}</td></tr></table>"
               f'<p id="judge-audit" class="persona">{esc(audit_sentence(result))}</p>'
               + "".join(f'<p class="persona score-note">{esc(line)}</p>'
                         for line in [*score_notes(result), option_share_line(result)] if line))  # fmt: skip
    per_turn = "".join(
        f"<tr><td>{k + 1}</td><td>{esc(format_interval(cis.al[k]))}</td><td>{m.scored[k]}</td></tr>"
        for k in range(len(m.al))
    )
    evals = EvalStore(store)
    transcripts = []
    for c in evals.trees.conversations(run_id):
        lines = "".join(
            f'<tr><td>{r.turn}</td><td class="text">{esc(r.user_message)}</td><td class="text">{esc(r.reply)}</td>'
            f'<td class="score">{esc(format_value(r.score.score, 2) if r.score.score is not None else "unscored")}</td></tr>'
            for r in evals.records(c.id)
        )
        transcripts.append(
            f'<details class="transcript"><summary><a class="id" href="/trees/{esc(c.id)}">{esc(c.id)}</a> '
            f"{esc(_short(c.persona.profile.text, 80))}</summary><table><tr><th>k</th><th>user</th><th>model</th>"
            f"<th>score</th></tr>{lines}</table></details>"
        )
    run = _as_ended(store.get_run(run_id) or {"id": run_id}, store.abandoned_runs())
    body = (f"<h1>Evaluation {esc(run_id)}</h1><p>model <code>{esc(config.model)}</code>, judge "
            f"<code>{esc(config.judge.backend)}</code> &middot; {esc(run.get('status'))}</p>{_error_html(run)}{svg}<h2>Metrics</h2>{metrics}<h2>AL(k)</h2>"
            f"<table><tr><th>k</th><th>AL(k) [95% CI]</th><th>scored</th></tr>{per_turn}</table>"
            f"<h2>Transcripts</h2>{''.join(transcripts)}")  # fmt: skip
    return page(f"evaluation {run_id}", body)
