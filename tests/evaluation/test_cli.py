import json
import shutil

import pytest

from aloekit.testing import StubOpenAIServer, role_aware_reply


def test_eval_compare_report(run_aloe, tmp_path):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        spec = server.spec()
        common = ["--role", f"user={spec}", "--role", f"judge={spec}", "--personas", "3", "--turns", "2"]
        blind = json.loads(run_aloe("--json", "eval", "--model", spec, *common).stdout)
        oracle = json.loads(run_aloe("--json", "eval", "--model", spec, "--baseline", "oracle", *common).stdout)
        replay = run_aloe("--json", "eval", "--model", spec, "--mode", "replay", "--replay-run", blind["run_id"],
                          "--role", f"judge={spec}")  # fmt: skip
    assert blind["statuses"] == {"complete": 3} and len(blind["al"]) == 2 and blind["unscored"] == 0
    assert json.loads(replay.stdout)["statuses"] == {"complete": 3}, replay.stderr
    runs = {r["id"]: r for r in json.loads(run_aloe("--json", "runs", "list").stdout)}
    assert runs[blind["run_id"]]["config"]["hardware"] is None  # every role on a server: nothing in-process
    compared = json.loads(run_aloe("--json", "compare", blind["run_id"], oracle["run_id"]).stdout)
    assert compared["personas"] == 3 and "avg_diff" in compared and "turns_differing" in compared
    proc = run_aloe("report", blind["run_id"], oracle["run_id"], "--out", "rep", "--note", "stub models")
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "> stub models" in report and "| AVG [95% CI] |" in report and "## Comparison" in report
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert [r["baseline"] for r in summary["runs"]] == ["blind", "oracle"]
    assert (tmp_path / "rep" / "al_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_bad_input(run_aloe):
    for args, message in [
        ((), "eval needs --model SPEC"),
        (("--model", "replay:x.json", "--role", "model=y"), "unknown role 'model'"),
        (("--resume", "nope"), "no run 'nope'"),
        (("--resume", "nope", "--model", "replay:x.json"), "no run 'nope'"),  # once: "--model cannot change it"
    ]:
        proc = run_aloe("eval", *args)
        assert proc.returncode == 1 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "no run 'x'" in run_aloe("report", "x", "--out", "r").stderr


def test_nothing_scored_is_null_in_json_and_na_in_text(run_aloe, tmp_path):
    def chatty(messages):  # a judge that never gives a usable score
        return "What a lovely reply!" if messages[-1]["content"].rstrip().endswith("Score (1-5):") else (
            role_aware_reply(messages))  # fmt: skip

    with StubOpenAIServer(respond=chatty) as server:
        spec = server.spec()
        args = ["eval", "--model", spec, "--role", f"user={spec}", "--role", f"judge={spec}", "--personas", "2",
                "--turns", "1"]  # fmt: skip
        proc = run_aloe("--json", *args)
        text = run_aloe(*args)
    result = json.loads(proc.stdout)  # valid JSON: no bare NaN
    assert result["avg"] is None and result["ir"] is None and result["al"] == [None] and result["unscored"] == 2
    assert "AVG n/a  IR n/a  R2 n/a  AL(k) n/a (n=0)" in text.stdout
    assert run_aloe("report", result["run_id"], "--out", "rep").returncode == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["runs"][0]["metrics"]["avg"] is None and summary["runs"][0]["ci"]["ir"]["low"] is None


def test_eval_records_the_hardware_of_an_in_process_model(run_aloe, tiny_model_dir):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        spec = server.spec()
        proc = run_aloe("--json", "eval", "--model", f"hf:{tiny_model_dir}", "--role", f"user={spec}",
                        "--role", f"judge={spec}", "--personas", "1", "--turns", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads(run_aloe("--json", "runs", "list").stdout)[0]
    hardware = run["config"]["hardware"]
    assert hardware["device"] in {"cpu", "cuda"}
    assert list(hardware["engines"]) == [f"hf:{tiny_model_dir}"]  # the servers' roles are not in-process
    # Servers play the other roles, so the conversations in flight stay as configured (16 by default).
    assert hardware["conversations"] == run["config"]["eval_resolved"]["concurrency"] == 16


def test_an_eval_is_not_resumed_with_a_model_whose_files_changed(run_aloe, tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    with StubOpenAIServer(respond=role_aware_reply) as server:
        first = run_aloe("--json", "eval", "--model", f"hf:{folder}", "--role", f"user={server.spec()}",
                         "--role", f"judge={server.spec()}", "--personas", "2", "--turns", "2",
                         "--budget-calls", "3")  # fmt: skip
        assert first.returncode == 0, first.stderr
        run_id = json.loads(first.stdout)["run_id"]
        (folder / "config.json").write_text((folder / "config.json").read_text() + " ")  # replaced in place
        resumed = run_aloe("eval", "--resume", run_id)
    assert resumed.returncode == 1 and resumed.stderr.startswith(f"error: run {run_id}: the files of hf:{folder} "
                                                                 "changed since it started")  # fmt: skip


def test_expected_scores_say_what_they_are_everywhere(run_aloe, tmp_path):
    # A server judge made to read expected scores: its answer "4" holds 0.4 of the first token, "5" 0.2, and
    # "Sorry" 0.4 goes to no option. Every output says the options held 60% and what that means.
    def reply(messages):
        return "4" if messages[-1]["content"].rstrip().endswith("Score (1-5):") else role_aware_reply(messages)

    def judge_distribution(messages):
        return {"4": 0.4, "Sorry": 0.4, "5": 0.2}

    (tmp_path / "aloe.toml").write_text('[evaluation.judge]\noptions = { score_mode = "expected" }\n')
    with StubOpenAIServer(respond=reply, distribution=judge_distribution) as server:
        spec = server.spec()
        proc = run_aloe("--json", "--config", "aloe.toml", "eval", "--model", spec, "--role", f"user={spec}",
                        "--role", f"judge={spec}", "--personas", "2", "--turns", "1")  # fmt: skip
    result = json.loads(proc.stdout)
    assert result["score_modes"] == ["expected"] and result["avg"] == pytest.approx((4 * 0.4 + 5 * 0.2) / 0.6, abs=1e-6)
    assert result["option_share"] == {"mean": 0.6, "min": 0.6, "n": 2}
    assert run_aloe("report", result["run_id"], "--out", "rep").returncode == 0
    line = f"{result['run_id']}: The five scores held on average 60% (lowest 60%) of the judge's first-token"
    assert line in (tmp_path / "rep" / "report.md").read_text()
    run = json.loads((tmp_path / "rep" / "summary.json").read_text())["runs"][0]
    assert run["score_modes"] == ["expected"] and run["option_share"]["mean"] == 0.6
    assert run["judge_kind"] == "alignment_scorer" and run["ci_method"].startswith("95% percentile bootstrap")
    from aloekit.store import Store
    from aloekit.viewer.render import eval_page

    page, _ = eval_page(Store(tmp_path / "aloe.db"), result["run_id"])
    assert "Scores are expected values" in page and "held on average 60% (lowest 60%)" in page
