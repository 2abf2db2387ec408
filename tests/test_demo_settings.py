"""The demo's own role settings, without running it (the quick demo itself runs in tests/integration)."""

from pathlib import Path

from aloekit import demo
from aloekit.agents.base import RoleView
from aloekit.agents.user import UserSimulator
from aloekit.evaluation.task import load_eval_personas


def test_demo_user_prompt_shows_the_persona_and_asks_for_a_detail():
    """The demo's simulated user must be shown its persona and asked to reveal one detail per message:
    SmolLM2 under the default prompt revealed no more than a generic reply, leaving nothing to adapt to."""
    options = demo.USER.options
    user = UserSimulator("user", client=None, **options)
    user.check_templates()
    persona = load_eval_personas("builtin")[0]
    system = user.render(RoleView(conversation_id="c", turn=1, persona=persona))[0]["content"]
    assert persona.profile.text in system and persona.personality.text in system
    assert "one concrete thing from your profile" in system
    # Every stage's user is that one: the simulation, the audits' probes, GRPO and the evaluation.
    scale = demo.FULL
    assert demo.simulation_config(scale).user.options == options
    assert all(a.user.options == options for a in demo.audit_configs(scale))
    assert demo.eval_config("local:smollm2", scale).user.options == options
    assert demo.grpo_settings(scale, Path("out"), Path("dpo")).user.options == options


def test_demo_refuses_a_db_it_would_not_use(run_aloe, tmp_path):
    # The demo keeps its runs in DIR/aloe.db: a --db was ignored without a word.
    proc = run_aloe("--db", "other.db", "demo", "--out", "d")
    assert (
        proc.returncode == 1
        and proc.stderr == "error: --db: aloe demo keeps its runs in its own d/aloe.db; leave --db out\n"
    )
    assert not (tmp_path / "d").exists() and not (tmp_path / "other.db").exists()
