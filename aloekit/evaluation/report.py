"""Evaluation results: metrics with bootstrap CIs per run, and report.md / summary.json / al_curve.png."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aloekit.config import format_loc, one_line
from aloekit.errors import AloeError, ConfigError
from aloekit.evaluation.audit import AuditResult, get_audit, judge_files, judge_key, latest_audit
from aloekit.evaluation.metrics import (
    N_BOOT,
    BootstrapCIs,
    Interval,
    Metrics,
    Scores,
    bootstrap,
    compare,
    compute_metrics,
    holm,
    smallest_signed_rank_p,
)
from aloekit.evaluation.task import EvalConfig, EvalStore
from aloekit.hardware import recorded_files
from aloekit.outputs import write_files
from aloekit.serialize import to_json
from aloekit.store import Store, run_kind

EXPECTED_SCORES_NOTE = (
    "Scores are expected values (sum of k x P(k) over the judge's next-token distribution on 1-5), "
    "so they are fractions, and a judge that always *answers* 1 can still rank replies."
)

SIMILARITY_SCORES_NOTE = (
    "Scores are persona_similarity ranks (1 + 4 x the share of other reference personas the reply is less "
    "similar to than to the true persona, by MiniLM embeddings): they measure topical tailoring, not style."
)


def eval_config(store: Store, run_id: str) -> EvalConfig:
    """The resolved config an evaluation run was started with; one line if there is none or it is unreadable."""
    run = store.get_run(run_id)
    if run is None:
        raise AloeError(f"no run {run_id!r} in {store.path}")
    try:
        stored = json.loads(run["config"] or "{}")
    except (TypeError, ValueError, RecursionError):
        raise AloeError(f"run {run_id}: its stored config is not valid JSON") from None
    resolved = stored.get("eval_resolved") if isinstance(stored, dict) else None
    if resolved is None:
        kind = run_kind(stored) if isinstance(stored, dict) else None
        what = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} run" if kind else "another command's run"
        raise AloeError(f"run {run_id} is not an evaluation run (it is {what})")
    try:
        return EvalConfig.model_validate(resolved)
    except ValidationError as exc:  # stored by an older aloekit, or edited: name the field, not a traceback
        err = exc.errors()[0]
        raise ConfigError(
            one_line(f"run {run_id}: stored eval config, field {format_loc(err['loc'])}: {err['msg']}")
        ) from None


def audit_of_run(
    store: Store, run_id: str, config: EvalConfig, files: dict[str, str]
) -> tuple[str | None, AuditResult | None]:
    """The judge audit recorded when the run started, else the newest audit of the same judge (on the same
    files, for an in-process judge)."""
    recorded = store.run_config(run_id).get("judge_audit")
    if recorded and (result := get_audit(store, recorded)) is not None:
        return recorded, result
    found = latest_audit(store, judge_key("eval", config.judge), judge_files(config.judge, files))
    return found if found else (None, None)


def run_cis(scores: Scores, turns: int, config: EvalConfig) -> BootstrapCIs:
    """A run's 95% bootstrap CIs: the one place they are computed, so every view of a run prints the same."""
    # Fixed resample count and the run's own seed: the viewer, `aloe report` and `aloe compare` once used
    # different counts, and so printed different intervals for the same run.
    return bootstrap(scores, turns, n_boot=N_BOOT, seed=config.seed)


def run_results(store: Store, run_id: str, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Metrics, CIs (``n_boot=0``: point metrics only, CIs NaN), the judge's audit and context of one run."""
    if n_boot not in (0, N_BOOT):  # any other count would print intervals that disagree with the other views
        raise ValueError(f"n_boot must be 0 (no intervals) or {N_BOOT}, not {n_boot}")
    config = eval_config(store, run_id)
    evals = EvalStore(store)
    scores = evals.scores(run_id)
    turns = max((c.max_turns for c in evals.trees.conversations(run_id)), default=config.turns)
    metrics = compute_metrics(scores, turns)
    cis = run_cis(scores, turns, config) if n_boot else bootstrap(scores, turns, n_boot=0)
    files = recorded_files(store.run_config(run_id))
    audit_id, audit = audit_of_run(store, run_id, config, files)
    second_scores = evals.second_scores(run_id)
    second = None
    if config.second_judge is not None and second_scores:
        audited = latest_audit(store, judge_key("eval", config.second_judge),
                               judge_files(config.second_judge, files))  # fmt: skip
        second = {"kind": config.second_judge.kind, "metrics": compute_metrics(second_scores, turns),
                  "scores": second_scores, "agreement": judge_agreement(scores, second_scores),
                  "audit_id": audited[0] if audited else None,
                  "audit": audited[1] if audited else None}  # fmt: skip
    return {"run_id": run_id, "config": config, "scores": scores, "turns": turns, "metrics": metrics, "cis": cis,
            "statuses": evals.trees.status_counts(run_id), "audit_id": audit_id, "audit": audit,
            "score_modes": evals.score_modes(run_id), "option_share": share_summary(evals.option_shares(run_id)),
            "second": second, "files": files}  # fmt: skip


def share_summary(shares: list[float]) -> dict[str, Any] | None:
    """Mean and lowest option share over a run's expected scores (None where it has none)."""
    return {"mean": sum(shares) / len(shares), "min": min(shares), "n": len(shares)} if shares else None


def option_share_line(result: dict[str, Any]) -> str | None:
    """What the judge's option shares say about its expected scores, if the run has any."""
    share = result.get("option_share")
    if share is None:
        return None
    return (f"The five scores held on average {share['mean']:.0%} (lowest {share['min']:.0%}) of the judge's "
            f"first-token probability over {share['n']} replies; the rest went to other tokens, so each score "
            "is the judge's preference among 1-5 when made to pick one.")  # fmt: skip


def score_notes(result: dict[str, Any]) -> list[str]:
    """What a run's scores are, in words (expected values, similarity ranks); none for text scores."""
    notes = {"expected": EXPECTED_SCORES_NOTE, "similarity": SIMILARITY_SCORES_NOTE}
    return [notes[mode] for mode in result["score_modes"] if mode in notes]


def judge_agreement(first: Scores, second: Scores) -> dict[str, Any]:
    """How far two judges rank the same replies alike: Spearman's rho (scipy) over replies both scored."""
    from scipy.stats import spearmanr

    pairs = [(value, second[pid][turn]) for pid, by_turn in first.items() for turn, value in by_turn.items()
             if value is not None and second.get(pid, {}).get(turn) is not None]  # fmt: skip
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return {"n": len(pairs), "spearman": None, "p": None}  # too few, or a constant judge: no ranking to compare
    rho, p_value = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return {"n": len(pairs), "spearman": float(rho), "p": float(p_value)}


def second_judge_line(result: dict[str, Any]) -> str | None:
    """One line on the second judge's metrics and its agreement with the judge, if the run had one."""
    second = result.get("second")
    if second is None:
        return None
    m, agreement = second["metrics"], second["agreement"]
    rho = "n/a" if agreement["spearman"] is None else f"{agreement['spearman']:.2f}"
    audit = second.get("audit")
    audited = "no audit" if audit is None else f"audit {second['audit_id']} {'passed' if audit.passed else 'FAILED'}"
    return (f"second judge ({second['kind']}, {audited}): AVG {format_value(m.avg)}  IR {format_value(m.ir)}; "
            f"agreement with the judge: Spearman rho {rho} over {agreement['n']} replies")  # fmt: skip


def format_value(value: float | None, digits: int = 3) -> str:
    """A number for tables: fixed digits, or "n/a" for None and NaN (never 0)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def audit_sentence(result: dict[str, Any]) -> str:
    """What the run's judge audit means for its numbers, in plain words."""
    audit: AuditResult | None = result["audit"]
    judge = f"{result['config'].judge.backend} ({result['config'].judge.kind})"
    if audit is None:
        return (f"Judge {judge} has no audit: nothing shows that its scores track tailoring "
                "(run `aloe judge audit --stage eval`).")  # fmt: skip
    return f"Judge {judge}, audit {result['audit_id']}: {audit.plain_words()}"


def format_interval(interval: Interval) -> str:
    """``value [low, high]`` with :func:`format_value`."""
    return f"{format_value(interval.value)} [{format_value(interval.low)}, {format_value(interval.high)}]"


def label(result: dict[str, Any]) -> str:
    """Short name of a run in tables and plots."""
    config: EvalConfig = result["config"]
    tag = "" if config.baseline == "blind" else f", {config.baseline}"
    return f"{config.model} ({config.mode}{tag})"


def write_plot(results: list[dict[str, Any]], path: Path) -> None:
    """AL(k) with 95% CI bands, one line per run, and the normalised curves beside it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for result in results:
        m: Metrics = result["metrics"]
        cis: BootstrapCIs = result["cis"]
        ks = list(range(1, len(m.al) + 1))
        line = left.plot(ks, m.al, marker="o", label=label(result))[0]
        left.fill_between(ks, [c.low for c in cis.al], [c.high for c in cis.al], color=line.get_color(), alpha=0.2)
        right.plot(
            ks, m.n_al, marker="o", color=line.get_color(), label=f"{label(result)}  N-IR {format_value(m.n_ir)}"
        )
    left.set(title="AL(k): mean judge score at turn k (95% CI)", xlabel="turn k", ylabel="AL(k), 1-5", ylim=(0.8, 5.2))
    right.set(title="N-AL(k): min-max normalised", xlabel="turn k", ylabel="N-AL(k)", ylim=(-0.05, 1.05))
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(store: Store, run_ids: list[str], out: Path, note: str | None = None) -> dict:
    """Write report.md, summary.json and al_curve.png for ``run_ids`` into ``out``; returns the summary."""
    if not run_ids:
        raise AloeError("report needs at least one evaluation run id")
    check_report_folder(out)  # before the bootstrap: a bad --out should not cost the wait
    results = [run_results(store, run_id) for run_id in run_ids]
    # Built before anything is written; runs that cannot be compared get a note in the report instead.
    comparison, table, not_compared = None, None, None
    try:
        if len(results) == 2:
            comparison = comparison_dict(results[0], results[1])
        elif len(results) > 2:
            table = methods_table(results)
    except AloeError as exc:
        not_compared = f"Not compared: {exc}."
    second_table = None
    if len(results) > 1 and all(r["second"] is not None for r in results):
        try:
            second_table = methods_table(results, judge="second_judge")
        except AloeError:  # different second judges: their numbers are listed per run only
            pass
    summary = {"runs": []}
    for r in results:
        config: EvalConfig = r["config"]
        m: Metrics = r["metrics"]
        summary["runs"].append({
            "run_id": r["run_id"], "model": config.model, "mode": config.mode, "baseline": config.baseline,
            "user_backend": config.user.backend if config.mode == "live" else f"replay of {config.replay_run}",
            "judge_backend": config.judge.backend, "personas": len(r["scores"]), "turns": r["turns"],
            "statuses": r["statuses"], "score_modes": r["score_modes"], "option_share": r["option_share"],
            "judge_kind": config.judge.kind, "metrics": asdict(m), "ci": asdict(r["cis"]),
            "ci_method": f"95% percentile bootstrap, personas resampled {N_BOOT} times, seed {config.seed}",
            "judge_audit": {"id": r["audit_id"], "passed": r["audit"].passed, "summary": r["audit"].summary_line()}
            if r["audit"] else None,
            "second_judge": {"kind": r["second"]["kind"], "metrics": asdict(r["second"]["metrics"]),
                             "agreement": r["second"]["agreement"]} if r["second"] else None,
        })  # fmt: skip
    lines = ["# ALOE evaluation report", ""]
    if note:
        lines += [f"> {note}", ""]
    lines += [
        "| run | model | mode | personas | AVG [95% CI] | IR [95% CI] | R2 [95% CI] | N-IR [95% CI] | N-R2 | "
        "unscored | judge audit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        m, cis, config = r["metrics"], r["cis"], r["config"]
        audit = "none" if r["audit"] is None else ("passed" if r["audit"].passed else "FAILED")
        ci = [format_interval(x) for x in (cis.avg, cis.ir, cis.r2, cis.n_ir)]
        lines.append(
            f"| {r['run_id']} | {config.model} | {config.mode}, {config.baseline} | {len(r['scores'])} | "
            f"{' | '.join(ci)} | {format_value(m.n_r2)} | {m.unscored} | {audit} |"
        )
    lines += ["", "## What the judge's audit means for these numbers", ""]
    lines += [f"- {sentence}" for sentence in dict.fromkeys(audit_sentence(r) for r in results)]  # once per judge
    lines += [f"- {note_line}" for note_line in dict.fromkeys(n for r in results for n in score_notes(r))]
    lines += [f"- {r['run_id']}: {line}" for r in results if (line := option_share_line(r))]
    second_lines = [f"- {r['run_id']}: {line}" for r in results if (line := second_judge_line(r))]
    if second_lines:
        lines += ["", "## Second judge (an independent metric; the table above is the judge's)", "", *second_lines]
    turns = max(r["turns"] for r in results)
    lines += ["", "## AL(k) per turn (95% CI; n = personas scored)", "",
              "| k | " + " | ".join(label(r) for r in results) + " |", "| --- |" + " --- |" * len(results)]  # fmt: skip
    for k in range(turns):
        cells = []
        for r in results:
            if k < len(r["metrics"].al):
                cells.append(f"{format_interval(r['cis'].al[k])} (n={r['metrics'].scored[k]})")
            else:
                cells.append("")
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    lines += ["", "## Setup", ""]
    for run in summary["runs"]:
        lines.append(
            f"- {run['run_id']}: model `{run['model']}`, {run['mode']} mode, baseline {run['baseline']}, "
            f"user `{run['user_backend']}`, judge `{run['judge_backend']}`, statuses {run['statuses']}"
        )
    lines += ["", "Metrics: AL(k) = mean score at turn k; AVG = mean of AL(k); IR = least-squares slope of AL(k) "
              "over k (with intercept and R2); N-AL = AL min-max normalised over the run's own curve; N-IR, N-R2 = "
              "the same fit on N-AL. Unscored replies (unparsable judge answers) are excluded and counted.",
              "", "![AL(k)](al_curve.png)", ""]  # fmt: skip
    if comparison is not None:
        summary["comparison"] = comparison
        lines += ["## Comparison (second run minus first)", "", *comparison_lines(comparison), ""]
    elif table is not None:
        summary["methods_table"] = table
        lines += ["## Every method against the first run", "", *methods_table_lines(table), ""]
    elif not_compared:
        lines += ["## Comparison", "", not_compared, ""]
    if second_table is not None:
        summary["second_judge_methods_table"] = second_table
        lines += ["## Every method against the first run, on the second judge", "",
                  *methods_table_lines(second_table), ""]  # fmt: skip
    texts = {"report.md": "\n".join(lines), "summary.json": to_json(summary, indent=2, default=str)}
    # All three whole or none: a full disk leaves no half-written file, and an earlier report as it was.
    write_files([(out / "al_curve.png", "--out", lambda target: write_plot(results, target)),
                 *((out / name, "--out", lambda target, text=text: target.write_text(text, encoding="utf-8"))
                   for name, text in texts.items())])  # fmt: skip
    return summary


def check_report_folder(out: Path) -> None:
    """Refuse a report ``--out`` that is a file, or lies under a file, in one line; writes nothing."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    existing = next((p for p in out.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder")
    for name in REPORT_FILES:  # one that cannot be written would leave the others half a report
        if (out / name).exists() and not (out / name).is_file():
            raise ConfigError(f"--out {out}: {name} there is not a file")


REPORT_FILES = ("report.md", "summary.json", "al_curve.png")
"""What ``aloe report`` writes into its folder."""


def check_same_score_modes(results: list[dict[str, Any]]) -> None:
    """Refuse to compare runs whose scores were read differently (text vs expected vs similarity)."""
    modes = {r["run_id"]: tuple(r["score_modes"]) for r in results if r["score_modes"]}
    if len(set(modes.values())) > 1:
        shown = ", ".join(f"{run} {'/'.join(mode)}" for run, mode in modes.items())
        raise AloeError(f"the runs' scores were read in different modes ({shown}): they are different metrics")


def check_same_judge(results: list[dict[str, Any]], judge: str = "judge") -> None:
    """Refuse to compare runs scored by different judges (``judge="second_judge"``: second judges), or by one
    in-process judge whose files changed between the runs (retrained or replaced)."""
    configs = [getattr(r["config"], judge) for r in results]
    if len({judge_key("eval", c) for c in configs}) > 1:
        raise AloeError("the runs were scored by different judges: runs are compared under one judge "
                        "(evaluate them with the same --role judge and judge settings)")  # fmt: skip
    files = {judge_files(c, r["files"]) for r, c in zip(results, configs, strict=True)} - {None}
    if len(files) > 1:
        raise AloeError(f"the runs' judge {configs[0].backend} answered with different files (retrained or "
                        "replaced between the runs): their scores are not comparable")  # fmt: skip


def comparison_dict(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Paired comparison of two run results on their shared personas (`aloe compare` and `aloe report`)."""
    check_same_score_modes([a, b])  # first: its message names the more specific difference
    check_same_judge([a, b])
    turns = min(a["turns"], b["turns"])
    try:
        c = compare(a["scores"], b["scores"], turns, n_boot=N_BOOT, seed=a["config"].seed)
    except ValueError as exc:
        raise AloeError(f"cannot compare {a['run_id']} and {b['run_id']}: {exc}") from None
    return {"run_a": a["run_id"], "run_b": b["run_id"], **asdict(c)}


def iv(d: dict[str, float]) -> str:
    """An interval stored as a dict (``asdict(Interval)``), as ``value [low, high]``."""
    return f"{format_value(d['value'])} [{format_value(d['low'])}, {format_value(d['high'])}]"


def comparison_lines(c: dict[str, Any]) -> list[str]:
    """Human-readable lines for a comparison."""

    p = "n/a (nothing paired)" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.4f}"
    turns = ", ".join(map(str, c["turns_differing"])) or "none"
    lines = [
        f"- personas compared: {c['personas']}, turns 1-{c['turns']}",
        f"- AVG difference (B - A): {iv(c['avg_diff'])}",
        f"- IR difference (B - A): {iv(c['ir_diff'])}",
        f"- Wilcoxon signed-rank on per-persona means over the turns both runs scored: p = {p} "
        f"(n = {c['wilcoxon_n']} personas)",
        f"- turns whose scores differ (per-turn signed-rank test, Holm-adjusted p < {c['alpha']}): {turns}",
    ]
    if 0 < (n := c["wilcoxon_n"]) and (smallest := smallest_signed_rank_p(n)) >= c["alpha"]:
        lines.append(f"- with {n} personas the signed-rank test on their means cannot reach p < {c['alpha']} (the "
                     f"smallest possible p is {smallest:.4f}): its p says nothing")  # fmt: skip
    if 0 < (most := max(c["turn_n"], default=0)) and (smallest := smallest_signed_rank_p(most)) >= c["alpha"]:
        lines.append(f"- with at most {most} personas paired at a turn, no per-turn test can reach p < {c['alpha']} "
                     f"(the smallest possible p is {smallest:.4f}), so \"none\" above says nothing")  # fmt: skip
    lines += [
        "",
        "| k | n | AL difference (B - A) [95% CI] | p | p (Holm) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, (n, diff, p_raw, p_holm) in enumerate(
        zip(c["turn_n"], c["al_diff"], c["turn_p"], c["turn_p_holm"], strict=True), start=1
    ):
        lines.append(f"| {k} | {n} | {iv(diff)} | {format_value(p_raw, 4)} | {format_value(p_holm, 4)} |")
    return lines


def methods_table(results: list[dict[str, Any]], judge: str = "judge") -> dict[str, Any]:
    """Every run as one method, on the personas all of them scored and one judge; each compared with the first
    (the base): paired-bootstrap AVG difference and a Wilcoxon test, Holm-adjusted across the methods.
    ``judge="second_judge"`` builds the same table from the runs' second judge."""
    if len(results) < 2:
        raise AloeError("a methods table needs at least two evaluation runs (the base first)")
    if judge == "second_judge":
        if any(r["second"] is None for r in results):
            raise AloeError("a second-judge methods table needs a second judge in every run")
        score_sets = [r["second"]["scores"] for r in results]
        judge_backend = f"{results[0]['second']['kind']} (second judge)"
    else:
        check_same_score_modes(results)
        score_sets = [r["scores"] for r in results]
        judge_backend = results[0]["config"].judge.backend
    check_same_judge(results, judge)
    shared = set.intersection(*(set(scores) for scores in score_sets))
    if not shared:
        raise AloeError("the runs share no personas (evaluate them on the same eval set)")
    turns = min(r["turns"] for r in results)
    base = results[0]
    rows, p_values = [], []
    on_shared = [{pid: scores[pid] for pid in sorted(shared)} for scores in score_sets]
    for r, scores in zip(results, on_shared, strict=True):
        metrics, cis = compute_metrics(scores, turns), run_cis(scores, turns, r["config"])
        row = {"run_id": r["run_id"], "method": label(r), "personas": len(scores), "metrics": asdict(metrics),
               "ci": asdict(cis), "vs_base": None}  # fmt: skip
        if r is not base:  # on the same personas as the columns
            c = compare(on_shared[0], scores, turns, n_boot=N_BOOT, seed=base["config"].seed)
            row["vs_base"] = {"avg_diff": asdict(c.avg_diff), "ir_diff": asdict(c.ir_diff), "p": c.wilcoxon_p,
                              "n": c.wilcoxon_n}  # fmt: skip
            p_values.append(c.wilcoxon_p)
        rows.append(row)
    for row, adjusted in zip(rows[1:], holm(p_values), strict=True):
        row["vs_base"]["p_holm"] = adjusted
    return {"base": base["run_id"], "turns": turns, "personas": len(shared), "judge": judge_backend,
            "rows": rows}  # fmt: skip


def methods_table_lines(table: dict[str, Any]) -> list[str]:
    """The methods table as Markdown."""

    lines = [
        f"Every method on the same {table['personas']} personas, turns 1-{table['turns']}, judge "
        f"`{table['judge']}`; differences are against the first run (the base), Wilcoxon p Holm-adjusted.",
        "",
        "| method | run | AVG [95% CI] | IR [95% CI] | N-IR [95% CI] | R2 | AVG - base [95% CI] | p (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table["rows"]:
        ci, m, vs = row["ci"], row["metrics"], row["vs_base"]
        diff = "(base)" if vs is None else iv(vs["avg_diff"])
        p = "" if vs is None else format_value(vs["p_holm"], 4)
        lines.append(f"| {row['method']} | {row['run_id']} | {iv(ci['avg'])} | {iv(ci['ir'])} | {iv(ci['n_ir'])} | "
                     f"{format_value(m['r2'])} | {diff} | {p} |")  # fmt: skip
    return lines
