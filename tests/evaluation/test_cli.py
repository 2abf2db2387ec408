import json

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
        (("--model", "replay:x.json", "--turns", "0"), "eval config: field turns"),
        (("--resume", "nope"), "no run 'nope'"),
    ]:
        proc = run_aloe("eval", *args)
        assert proc.returncode == 1 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "no run 'x'" in run_aloe("report", "x", "--out", "r").stderr
