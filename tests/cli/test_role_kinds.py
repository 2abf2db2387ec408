"""A role kind put where the graph needs another answer (a judge as the user, a user as the judge) is refused in
one line before any run row or model call; before, it crashed mid-run or failed every conversation."""

import json

import pytest

CASES = [
    (
        '[simulation.user]\nkind = "preference_judge"\n',
        ["simulate", "--conversations", "1", "--turns", "1"],
        "role 'user': kind preference_judge answers with a verdict, but the user must answer with text",
    ),
    (
        '[simulation.judge]\nkind = "user_simulator"\n',
        ["simulate", "--conversations", "1", "--turns", "1"],
        "role 'judge': kind user_simulator answers with text, but the judge must answer with a verdict",
    ),
    (
        '[evaluation.judge]\nkind = "responder"\n',
        ["eval", "--model", "replay:replies.json", "--personas", "2"],
        "role 'judge': kind responder answers with text, but the judge must answer with a score",
    ),
    (
        '[evaluation.judge]\nkind = "preference_judge"\n',
        ["judge", "audit", "--personas", "2"],
        "role 'judge': kind preference_judge answers with a verdict, but the judge must answer with a score",
    ),
]


@pytest.mark.parametrize(("config", "args", "message"), CASES, ids=["user", "sim-judge", "eval-judge", "audit"])
def test_a_role_of_the_wrong_kind_is_refused_before_the_run(run_aloe, tmp_path, config, args, message):
    (tmp_path / "aloe.toml").write_text(config)
    (tmp_path / "replies.json").write_text(json.dumps(["hello"]))
    proc = run_aloe("--config", "aloe.toml", *args)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {message}", proc.stderr
    assert json.loads(run_aloe("--json", "runs", "list").stdout) == []


def test_persona_similarity_may_judge_both_ways():
    # It answers with a verdict in a simulation and with a score in an evaluation: refused in neither.
    from aloekit.errors import ConfigError
    from aloekit.graphs.simulate import RoleConfig, check_role

    check_role("judge", RoleConfig(kind="persona_similarity"), answer="verdict")
    check_role("judge", RoleConfig(kind="persona_similarity"), answer="score")
    with pytest.raises(ConfigError, match="kind persona_similarity answers with a score or a verdict, but the user"):
        check_role("user", RoleConfig(kind="persona_similarity"), answer="text")
