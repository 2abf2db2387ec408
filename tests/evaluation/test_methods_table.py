"""One table of every evaluated method against the base, on shared personas and one judge."""

from __future__ import annotations

import json

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.errors import AloeError
from aloekit.evaluation import EvalConfig, create_eval_conversations, run_evaluation
from aloekit.evaluation.report import comparison_dict, methods_table, methods_table_lines, run_results
from aloekit.graphs import RoleConfig
from aloekit.store import Store
from tests.helpers import ScriptedClient


def user(messages, options):
    return f"user message {sum(m['role'] == 'assistant' for m in messages) + 1}"


def judge(messages, options):
    """1 + the number of "good" in the reply, + 1 at turn 3 for "learns" (so IR differs too)."""
    prompt = messages[-1]["content"]
    reply = prompt.split("The reply:\n", 1)[1].split("\n\nScore", 1)[0]
    bonus = 1 if "learns" in reply and "user message 3" in prompt else 0
    return str(min(5, 1 + reply.count("good") + bonus))


MODELS = {"base": "plain", "better": "good good", "learner": "plain learns"}


async def evaluate(scripted, store, name, personas=6, judge_fn=judge):
    # One judge spec per judge function: a methods table needs every run scored by the same judge.
    specs = {role: scripted(key, ScriptedClient(fn)) for role, key, fn in
             (("user", "user", user), ("model", f"model-{name}", lambda m, o: MODELS[name]),
              ("judge", f"judge-{judge_fn.__name__}", judge_fn))}  # fmt: skip
    config = EvalConfig(model=specs["model"], personas=personas, turns=3)
    config = config.with_backend("user", specs["user"]).with_backend("judge", specs["judge"])
    run_id = store.start_run("eval", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store)
    await run_evaluation(store, backends, config, run_id)
    return run_id


async def test_every_method_against_the_base_with_holm_adjusted_p(scripted, tmp_path):
    store = Store(tmp_path / "aloe.db")
    runs = [await evaluate(scripted, store, name) for name in ("base", "better", "learner")]
    table = methods_table([run_results(store, r, n_boot=0) for r in runs])
    base, better, learner = table["rows"]
    assert table["base"] == runs[0] and table["personas"] == 6 and table["turns"] == 3
    assert base["vs_base"] is None and base["metrics"]["avg"] == pytest.approx(1.0)
    assert better["vs_base"]["avg_diff"]["value"] == pytest.approx(2.0) and better["metrics"]["ir"] == pytest.approx(0)
    assert learner["vs_base"]["avg_diff"]["value"] == pytest.approx(1 / 3) and learner["metrics"]["ir"] > 0
    for row in (better, learner):  # Holm never lowers a p-value
        assert row["vs_base"]["p_holm"] >= row["vs_base"]["p"]
    lines = methods_table_lines(table)
    assert lines[2].startswith("| method | run | AVG [95% CI] |") and "(base)" in lines[4] and len(lines) == 7


async def test_runs_under_different_judges_or_personas_are_refused(scripted, tmp_path):
    store = Store(tmp_path / "aloe.db")

    def lenient(messages, options):
        return "5"

    a = await evaluate(scripted, store, "base")
    b = await evaluate(scripted, store, "better", judge_fn=lenient)
    with pytest.raises(AloeError, match="scored by different judges"):
        methods_table([run_results(store, r, n_boot=0) for r in (a, b)])
    with pytest.raises(AloeError, match="at least two evaluation runs"):
        methods_table([run_results(store, a, n_boot=0)])
    with pytest.raises(AloeError, match="scored by different judges"):  # two runs: `aloe compare`, `aloe report`
        comparison_dict(run_results(store, a, n_boot=0), run_results(store, b, n_boot=0))


async def test_runs_whose_in_process_judge_changed_files_are_refused(scripted, tmp_path):
    store = Store(tmp_path / "aloe.db")
    runs = [await evaluate(scripted, store, name) for name in ("base", "better", "learner")]
    judge = run_results(store, runs[0], n_boot=0)["config"].judge.backend

    def record_files(run_id: str, files: dict[str, str]) -> None:  # as simulate/eval record an in-process judge's
        config = json.loads(store.get_run(run_id)["config"])
        store.update("runs", run_id, {"config": json.dumps({**config, "hardware": {"files": files}})})

    record_files(runs[0], {judge: "a" * 16})
    record_files(runs[1], {judge: "a" * 16})  # the third run has no record (an older run): not a difference
    results = [run_results(store, r, n_boot=0) for r in runs]
    assert len(methods_table(results)["rows"]) == 3 and comparison_dict(results[0], results[1])
    # A run that recorded no audit id is vouched for by the newest audit of its judge's files, not another's.
    from dataclasses import replace

    from aloekit.evaluation.audit import AuditResult, judge_key, save_audit

    blank = AuditResult(stage="eval", judge_key=judge_key("eval", results[0]["config"].judge), judge={},
                        eval_set="builtin", personas=2, probes=2, trials=2, correct=2, invalid=0, accuracy=1.0,
                        ci_low=0.6, ci_high=1.0, invalid_rate=0.0, flip_rate=None, tie_rate=0.0,
                        by_kind={})  # fmt: skip
    of_these = save_audit(store, runs[0], replace(blank, judge_files="a" * 16))
    newer = save_audit(store, runs[0], replace(blank, judge_files="c" * 16))  # of other files
    store.update("judge_audits", newer, {"created_at": "9999"})  # the newest, whatever the clock's resolution
    assert run_results(store, runs[0], n_boot=0)["audit_id"] == of_these
    record_files(runs[1], {judge: "b" * 16})  # the judge was retrained between the runs
    results = [run_results(store, r, n_boot=0) for r in runs]
    for compared in (lambda: methods_table(results), lambda: comparison_dict(results[0], results[1])):
        with pytest.raises(AloeError, match=f"judge {judge} answered with different files"):
            compared()


async def test_compare_table_cli_and_the_report(scripted, tmp_path, run_aloe):
    store = Store(tmp_path / "aloe.db")
    runs = [await evaluate(scripted, store, name, personas=3) for name in ("base", "better", "learner")]
    store.close()
    proc = run_aloe("compare", "--table", *runs)
    assert proc.returncode == 0, proc.stderr
    assert "| method | run | AVG [95% CI]" in proc.stdout and proc.stdout.count("\n| ") == 5
    as_json = json.loads(run_aloe("--json", "compare", "--table", *runs).stdout)
    assert [row["run_id"] for row in as_json["rows"]] == runs
    one = run_aloe("compare", runs[0])
    assert one.returncode == 1 and one.stderr.startswith("error: compare takes two runs (RUN_A RUN_B), or --table")
    report = run_aloe("report", *runs, "--out", "rep")
    assert report.returncode == 0, report.stderr
    assert "## Every method against the first run" in (tmp_path / "rep" / "report.md").read_text()


async def test_a_report_of_runs_that_cannot_share_a_table_says_so_instead_of_failing(scripted, tmp_path):
    from aloekit.evaluation.report import comparison_dict, write_report

    store = Store(tmp_path / "aloe.db")

    def other(messages, options):
        return "4"

    runs = [await evaluate(scripted, store, "base"), await evaluate(scripted, store, "better"),
            await evaluate(scripted, store, "learner", judge_fn=other)]  # fmt: skip
    summary = write_report(store, runs, tmp_path / "rep")
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "methods_table" not in summary and "Not compared: the runs were scored by different judges" in text
    # Scores read in different modes are different metrics: never compared.
    similarity = {"judge": RoleConfig(kind="persona_similarity")}
    mixed = [run_results(store, runs[0], n_boot=0), run_results(store, runs[1], n_boot=0)]
    mixed[1] = {**mixed[1], "score_modes": ["similarity"], "config": mixed[1]["config"].model_copy(update=similarity)}
    with pytest.raises(AloeError, match="read in different modes"):
        comparison_dict(*mixed)
