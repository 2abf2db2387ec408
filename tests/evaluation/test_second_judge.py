"""A second, independent judge (persona_similarity) scoring every reply beside the judge, and their agreement."""

from __future__ import annotations

import json
import re

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.evaluation import EvalConfig, EvalStore, create_eval_conversations, run_evaluation
from aloekit.evaluation.report import judge_agreement, run_results
from aloekit.graphs import RoleConfig
from aloekit.store import Store
from tests.helpers import ScriptedClient


def user(messages, options):
    """The simulated user mentions their profile (from the persona in its prompt) in every message."""
    profile = re.search(r"Profile: (.+)", messages[0]["content"]).group(1)
    return f"user message {sum(m['role'] == 'assistant' for m in messages) + 1}|{profile}"


def model(messages, options):
    """Odd turns talk about the user's life (their words back), even turns about nothing in particular."""
    turn = sum(m["role"] == "assistant" for m in messages) + 1
    return "Okay, sounds good." if turn % 2 == 0 else "You love what you do: " + messages[-1]["content"].split("|")[1]


def judge(messages, options):
    """A judge that likes replies about the person's life."""
    return "5" if "You love what you do" in messages[-1]["content"] else "1"


def generic(messages, options):
    return "Okay, sounds good."


async def evaluate(scripted, store, model_fn=model):
    specs = {name: scripted(f"second-{name}", ScriptedClient(fn)) for name, fn in
             (("user", user), (f"model-{model_fn.__name__}", model_fn), ("judge", judge))}  # fmt: skip
    config = EvalConfig(model=specs[f"model-{model_fn.__name__}"], personas=4, turns=4,
                        second_judge=RoleConfig(kind="persona_similarity", backend=specs["judge"]))  # fmt: skip
    config = config.with_backend("user", specs["user"]).with_backend("judge", specs["judge"])
    run_id = store.start_run("eval", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store)
    await run_evaluation(store, backends, config, run_id)
    return run_id


async def test_a_second_judge_scores_every_reply_and_its_agreement_is_reported(scripted, tmp_path):
    store = Store(tmp_path / "aloe.db")
    run_id = await evaluate(scripted, store)
    record = EvalStore(store).records(f"{run_id}-0000")[0]
    assert record.second_score is not None and record.second_score.mode == "similarity"
    results = run_results(store, run_id, n_boot=0)
    second = results["second"]
    assert second["kind"] == "persona_similarity" and second["agreement"]["n"] == 16
    # Both judges prefer the replies about the person's life: they agree.
    assert second["agreement"]["spearman"] > 0.7 and second["metrics"].avg > 1
    assert results["metrics"].avg == 3.0  # the headline numbers stay the judge's: half 5s, half 1s


async def test_methods_are_compared_on_the_second_judge_too(scripted, tmp_path):
    from aloekit.evaluation.report import methods_table, write_report

    store = Store(tmp_path / "aloe.db")
    runs = [await evaluate(scripted, store, generic), await evaluate(scripted, store, model)]
    table = methods_table([run_results(store, r, n_boot=0) for r in runs], judge="second_judge")
    assert table["judge"] == "persona_similarity (second judge)" and table["personas"] == 4
    # Half the tailored model's replies are about the person: the second judge ranks them above generic ones.
    assert table["rows"][1]["vs_base"]["avg_diff"]["value"] > 0.5
    first = methods_table([run_results(store, r, n_boot=0) for r in runs])
    assert first["rows"][1]["vs_base"]["avg_diff"]["value"] == 2.0  # the judge's own table: 3.0 vs 1.0
    summary = write_report(store, runs, tmp_path / "rep")
    assert summary["second_judge_methods_table"]["rows"][1]["run_id"] == runs[1]
    assert "## Every method against the first run, on the second judge" in (tmp_path / "rep" / "report.md").read_text()


def test_agreement_needs_a_ranking_from_both_judges():
    first = {"a": {1: 1.0, 2: 2.0, 3: 3.0}, "b": {1: 4.0, 2: None}}
    assert judge_agreement(first, {"a": {1: 1.5, 2: 2.5, 3: 3.5}, "b": {1: 5.0, 2: 1.0}})["spearman"] == 1.0
    constant = judge_agreement(first, {"a": {1: 3.0, 2: 3.0, 3: 3.0}})
    assert constant == {"n": 3, "spearman": None, "p": None}


def test_the_cli_and_report_show_the_second_judge(run_aloe, tmp_path):
    from aloekit.testing import StubOpenAIServer, role_aware_reply

    (tmp_path / "aloe.toml").write_text('[evaluation.second_judge]\nkind = "persona_similarity"\n')
    with StubOpenAIServer(respond=role_aware_reply) as server:
        spec = server.spec()
        proc = run_aloe("--json", "--config", "aloe.toml", "eval", "--model", spec, "--role", f"user={spec}",
                        "--role", f"judge={spec}", "--personas", "2", "--turns", "2")  # fmt: skip
        text = run_aloe("--config", "aloe.toml", "eval", "--model", spec, "--role", f"user={spec}",
                        "--role", f"judge={spec}", "--personas", "2", "--turns", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["second_judge"]["kind"] == "persona_similarity" and result["second_judge"]["agreement"]["n"] == 4
    assert "second judge (persona_similarity, no audit): AVG" in text.stdout
    report = run_aloe("report", result["run_id"], "--out", "rep")
    assert report.returncode == 0 and "## Second judge" in (tmp_path / "rep" / "report.md").read_text()
    second_run = text.stdout.split()[1]  # "run ID (live): ..."
    table = run_aloe("--json", "compare", "--table", "--second-judge", result["run_id"], second_run)
    assert table.returncode == 0, table.stderr
    assert json.loads(table.stdout)["judge"] == "persona_similarity (second judge)"
    alone = run_aloe("compare", "--second-judge", result["run_id"], second_run)
    assert alone.returncode == 1 and alone.stderr.strip() == "error: --second-judge needs --table"
