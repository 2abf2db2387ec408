"""Role checks before a run is recorded: kinds, options, templates, --role names and specs, numeric ranges."""

import pytest
from pydantic import ValidationError

from aloekit.agents import PromptRole, register_role
from aloekit.agents.judge import PreferenceJudge
from aloekit.config import GenerationOptions
from aloekit.errors import AloeError, ConfigError, SpecError
from aloekit.evaluation.task import EvalConfig
from aloekit.graphs import SimulationConfig, build_roles
from aloekit.graphs.simulate import (
    MAX_CONCURRENCY,
    MAX_CONVERSATIONS,
    MAX_TURNS,
    SQLITE_INT_MAX,
    ResponderConfig,
    RoleConfig,
    check_role,
)
from tests.graphs.scripted import scripted_setup


@register_role("test_checks_plain_judge")
class PlainJudge(PromptRole):
    """A judge kind without paper_exact or both_orders options."""


@register_role("test_checks_hinted")
class HintTaker(PromptRole):
    """A responder kind that takes use_hint under that name."""

    def __init__(self, name, client, *, use_hint: bool = False, **kwargs) -> None:
        super().__init__(name, client, **kwargs)
        self.use_hint = use_hint


def with_role(config: SimulationConfig, role: str, **update) -> SimulationConfig:
    data = config.model_dump()
    data[role] = {**data[role], **update}
    return SimulationConfig.model_validate(data)


def error_of(check) -> str:
    with pytest.raises(AloeError) as info:
        check()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_default_roles_pass():
    SimulationConfig().check_roles()
    SimulationConfig(paper_exact=True).check_roles()
    SimulationConfig(judge_both_orders=True).check_roles()


@pytest.mark.parametrize(
    ("role", "update", "expected"),
    [
        ("judge", {"options": {"temprature": 0.3}}, "role 'judge' (preference_judge): unknown option 'temprature'"),
        ("judge", {"options": {"labels": "roman"}}, "option 'labels': Input should be 'numbers' or 'letters'"),
        ("judge", {"kind": "nosuch"}, "role 'judge': unknown role kind 'nosuch' (registered: alignment_scorer,"),
        ("user", {"kind": "nosuch"}, "role 'user': unknown role kind 'nosuch'"),
        (
            "user",
            {"options": {"system_prompt": "I am {persnoa}"}},
            "role 'user': option 'system_prompt': unknown "
            "placeholder {persnoa} (allowed: {hint}, {personality}, {profile}",
        ),  # fmt: skip
        ("inducer", {"options": {"system_prompt": "{unclosed"}}, "role 'inducer': option 'system_prompt': malformed"),
        (
            "judge",
            {"options": {"user_prompt": "{candidats}"}},
            "role 'judge': option 'user_prompt': unknown "
            "placeholder {candidats} (allowed: {candidates}, {instruction}, {user_message}",
        ),  # fmt: skip
        ("judge", {"options": {"paper_exact": True}}, "option 'paper_exact' is set from the run's config"),
    ],
)
def test_bad_roles_fail_in_one_line(role, update, expected):
    config = with_role(SimulationConfig(), role, **update)
    assert expected in error_of(config.check_roles)
    with pytest.raises(ConfigError):
        config.check_roles()


def test_responders_never_see_the_persona():
    config = SimulationConfig()
    data = config.model_dump()
    data["responders"][1]["options"] = {"system_prompt": "Talk to {profile}."}
    message = error_of(SimulationConfig.model_validate(data).check_roles)
    assert message.startswith("role 'plain': option 'system_prompt': placeholder {profile} cannot be used: this role")


def test_paper_exact_needs_a_judge_that_takes_it():
    config = with_role(SimulationConfig(judge_both_orders=True), "judge", kind="test_checks_plain_judge")
    message = error_of(config.check_roles)
    kind = "test_checks_plain_judge"
    assert message == f"role 'judge' ({kind}): judge_both_orders needs a role kind with a 'both_orders' option"
    with_role(SimulationConfig(), "judge", kind="test_checks_plain_judge").check_roles()  # not asked: fine


def test_use_hint_reaches_any_kind_that_takes_it(scripted):
    config, backends, _ = scripted_setup(scripted)
    data = config.model_dump()
    data["responders"][0]["kind"] = "test_checks_hinted"
    data["responders"][1]["kind"] = "model_under_test"  # takes no use_hint: the slot alone decides on the hint
    roles = build_roles(SimulationConfig.model_validate(data), backends)
    assert roles.responders[0].role.use_hint is True and roles.responders[0].use_hint is True
    assert roles.responders[1].use_hint is False


def test_build_roles_fails_before_any_call(scripted):
    config, backends, clients = scripted_setup(scripted)
    bad = with_role(config, "judge", options={"system_prompt": "{persnoa}"})
    with pytest.raises(ConfigError, match=r"role 'judge': option 'system_prompt': unknown placeholder \{persnoa\}"):
        build_roles(bad, backends)
    bad = with_role(config, "judge", options={"nope": 1})
    with pytest.raises(ConfigError, match="role 'judge' .*unknown option 'nope'"):
        build_roles(bad, backends)
    assert all(not client.calls for client in clients.values())


def test_check_role_for_other_commands():
    """``aloe eval`` checks its roles the same way: the model sees the persona only as the oracle baseline."""
    model = RoleConfig(kind="model_under_test", options={"system_prompt": "You talk to {profile}."})
    check_role("model", model, sees_persona=True, oracle=True)
    message = error_of(lambda: check_role("model", model, sees_persona=False, oracle=False))
    assert "role 'model': option 'system_prompt': placeholder {profile} cannot be used" in message
    scorer = RoleConfig(kind="alignment_scorer", options={"score_mode": "expected", "guided_choice": True})
    check_role("judge", scorer)
    message = error_of(lambda: check_role("judge", RoleConfig(kind="alignment_scorer", options={"mode": "x"})))
    assert message.startswith("role 'judge' (alignment_scorer): unknown option 'mode'")
    message = error_of(lambda: check_role("model", model, oracle=True, sees_persona=True, extra_kw=1))
    assert "TypeError" in message and message.startswith("role 'model' (model_under_test): ")


def test_check_role_builds_nothing_expensive(monkeypatch):
    built = []
    original = PreferenceJudge.__init__

    def spy(self, name, client, **kwargs):
        built.append(type(client).__name__)
        original(self, name, client, **kwargs)

    monkeypatch.setattr(PreferenceJudge, "__init__", spy)
    check_role("judge", RoleConfig(kind="preference_judge", backend="openai:gpt-4o-mini"))
    assert built == ["ReplayChatCompletionClient"]  # no backend client, no key needed, nothing called


# --role ROLE=SPEC --------------------------------------------------------------------------------------


def test_role_flag_with_an_unknown_prefix_is_a_spec_error():
    with pytest.raises(SpecError, match=r"^unknown backend prefix 'foo' \(known: .*local, .*openai"):
        SimulationConfig().with_backend("all", "foo:bar")
    with pytest.raises(SpecError, match="malformed backend spec"):
        SimulationConfig().with_backend("judge", "smollm2")


def test_role_flag_with_an_unknown_role_lists_the_names():
    message = error_of(lambda: SimulationConfig().with_backend("nosuchrole", "local:smollm2"))
    assert message == "unknown role 'nosuchrole' in --role (use one of: user, inducer, preferred, plain, judge, all)"
    with pytest.raises(ConfigError):
        SimulationConfig().with_backend("nosuchrole", "local:smollm2")


def test_backend_specs_lists_every_spec_once():
    config = SimulationConfig().with_backend("judge", "openai:gpt-4o-mini")
    assert config.backend_specs() == ["local:smollm2", "openai:gpt-4o-mini"]


@pytest.mark.parametrize("name", ["user", "judge", "all", "inducer"])
def test_responder_names_cannot_shadow_fixed_roles(name):
    responders = [ResponderConfig(name=name, kind="responder"), ResponderConfig(name="plain", kind="responder")]
    with pytest.raises(ValidationError, match=f"responder name '{name}' is taken"):
        SimulationConfig(responders=responders)


# Numeric ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("conversations", 0),
        ("conversations", MAX_CONVERSATIONS + 1),
        ("turns", 0),
        ("turns", MAX_TURNS + 1),
        ("concurrency", 0),
        ("concurrency", MAX_CONCURRENCY + 1),
        ("max_calls", 0),
        ("max_calls", SQLITE_INT_MAX + 1),
        ("max_tokens", 0),
        ("seed", SQLITE_INT_MAX + 1),
    ],
)
def test_simulation_ranges(field, value):
    with pytest.raises(ValidationError) as info:
        SimulationConfig.model_validate({field: value})
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("personas", 0),
        ("personas", MAX_CONVERSATIONS + 1),
        ("turns", 0),
        ("turns", MAX_TURNS + 1),
        ("concurrency", 0),
        ("concurrency", MAX_CONCURRENCY + 1),
        ("max_calls", 0),
        ("max_tokens", -5),
        ("max_tokens", SQLITE_INT_MAX + 1),
        ("seed", -(2**63) - 1),
    ],
)
def test_eval_ranges(field, value):
    with pytest.raises(ValidationError) as info:
        EvalConfig.model_validate({"model": "local:smollm2", field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_ranges_accept_their_bounds():
    SimulationConfig(conversations=MAX_CONVERSATIONS, turns=MAX_TURNS, concurrency=MAX_CONCURRENCY,
                     max_calls=SQLITE_INT_MAX, max_tokens=1, seed=SQLITE_INT_MAX)  # fmt: skip
    EvalConfig(model="local:smollm2", personas=1, turns=MAX_TURNS, concurrency=1, max_calls=1, seed=-(2**63))


@pytest.mark.parametrize(
    ("generation", "field"),
    [({"temperature": -0.1}, "temperature"), ({"max_tokens": 0}, "max_tokens"), ({"top_p": 0}, "top_p"),
     ({"top_p": 1.5}, "top_p"), ({"temprature": 0.1}, "temprature")],
)  # fmt: skip
def test_role_generation_ranges_name_the_field(generation, field):
    with pytest.raises(ValidationError) as info:
        SimulationConfig.model_validate({"judge": {"kind": "preference_judge", "generation": generation}})
    assert info.value.errors()[0]["loc"][:3] == ("judge", "generation", field)


def test_role_tables_need_a_kind_and_a_backend():
    for table in ({"kind": ""}, {"kind": "inducer", "backend": ""}):
        with pytest.raises(ValidationError):
            SimulationConfig.model_validate({"inducer": table})
    assert GenerationOptions(top_p=1).top_p == 1
