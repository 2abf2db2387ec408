"""Role options come from the role factory's signature; templates are checked before any call."""

from pathlib import Path

import pytest

from aloekit.agents import PromptRole, register_role
from aloekit.agents.base import (
    RESERVED_OPTIONS,
    check_role_options,
    check_template,
    format_template,
    probe_view,
    role_options,
)
from aloekit.agents.judge import PreferenceJudge
from aloekit.errors import ConfigError
from tests.helpers import ScriptedClient


@register_role("test_opts_strict")
class StrictRole(PromptRole):
    """A custom role with one option of its own, passing the rest to PromptRole."""

    system_prompt = "Be {mood}. {hint}"

    def __init__(self, name, client, *, mood: str = "kind", **kwargs) -> None:
        super().__init__(name, client, **kwargs)
        self.mood = mood

    def fields(self, view):
        return {**super().fields(view), "mood": self.mood}


@register_role("test_opts_open")
def open_factory(name, client, **anything):
    """A function factory taking **kwargs: any option is accepted."""
    return StrictRole(name, client, mood=str(anything.get("mood", "kind")))


def test_builtin_roles_accept_only_their_keywords():
    assert role_options("user_simulator") == {"system_prompt"}
    assert role_options("inducer") == {"system_prompt"}
    assert role_options("responder") == {"system_prompt", "use_hint"}
    assert role_options("preference_judge") == {
        "system_prompt", "user_prompt", "labels", "score_mode", "paper_exact", "both_orders",
    }  # fmt: skip
    assert role_options("alignment_scorer") == {"system_prompt", "guided_choice", "score_mode"}
    assert role_options("model_under_test") == {"system_prompt", "oracle"}
    assert not set(RESERVED_OPTIONS) & role_options("responder")


def test_custom_roles_follow_their_signature():
    assert role_options("test_opts_strict") == {"mood", "system_prompt"}
    assert role_options("test_opts_open") is None


@pytest.mark.parametrize(
    ("kind", "options", "match"),
    [
        ("preference_judge", {"temprature": 0.2}, r"unknown option 'temprature' \(did you mean generation.temperature"),
        ("preference_judge", {"temperature": 0.2}, "temperature is a generation option"),
        ("preference_judge", {"lables": "letters"}, r"unknown option 'lables' \(did you mean labels\?\)"),
        ("preference_judge", {"labels": "roman"}, "'labels': Input should be 'numbers' or 'letters', got 'roman'"),
        ("preference_judge", {"both_orders": "yes"}, "option 'both_orders': Input should be a valid boolean"),
        ("alignment_scorer", {"score_mode": "exp"}, "'score_mode': Input should be 'auto', 'text' or 'expected'"),
        ("user_simulator", {"system_prompt": 3}, "option 'system_prompt': Input should be a valid string"),
        ("user_simulator", {"backend": "local:smollm2"}, "set the role's backend instead"),
        ("user_simulator", {"generation": {}}, "set the role's generation table instead"),
        ("test_opts_strict", {"mod": "calm"}, r"unknown option 'mod' \(did you mean mood\?\) \(accepted: mood, system"),
    ],
)
def test_bad_options_are_one_line(kind, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        check_role_options("judge", kind, options)
    assert str(info.value).startswith(f"role 'judge' ({kind}): ") and "\n" not in str(info.value)


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as info:
        check_role_options("user", "user_simulator", {"persona_style": "x"})
    assert str(info.value) == "role 'user' (user_simulator): unknown option 'persona_style' (accepted: system_prompt)"


def test_options_set_by_aloekit_are_refused_and_not_listed():
    with pytest.raises(ConfigError, match="option 'use_hint' is set from the run's config") as info:
        check_role_options("plain", "responder", {"use_hint": True}, provided=["use_hint"])
    with pytest.raises(ConfigError, match=r"\(accepted: system_prompt\)"):
        check_role_options("plain", "responder", {"hint": True}, provided=["use_hint"])
    assert "plain" in str(info.value)


def test_good_options_and_open_factories_pass():
    check_role_options("judge", "preference_judge", {"labels": "letters", "score_mode": "expected"})
    check_role_options("judge", "alignment_scorer", {"guided_choice": True})
    check_role_options("x", "test_opts_open", {"anything": 1, "mood": "calm"})


def test_unknown_kind_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown role kind 'nope' \(registered: .*preference_judge.*"):
        role_options("nope")


def test_prompt_role_takes_no_stray_keywords():
    with pytest.raises(TypeError):
        PromptRole("x", ScriptedClient(), temprature=0.3)


# Templates -----------------------------------------------------------------------------------------

ALLOWED = {"hint", "profile", "personality"}


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("Hi {persnoa}", r"unknown placeholder \{persnoa\} \(allowed: \{hint\}, \{personality\}, \{profile\}; write"),
        ("Hi {unclosed", "malformed template: expected '}' before end of string"),
        ("Hi } there", "malformed template: Single '}' encountered"),
        ('Answer as {"score": 1}', r'unknown placeholder \{"score"\}.*write \{\{ and \}\} for literal braces'),
        ("{}", r"unknown placeholder \{\}"),
        ("{0}", r"unknown placeholder \{0\}"),
        ("{profile.text}", r"unknown placeholder \{profile.text\}"),
        ("{hint!x}", "unknown conversion"),
        ("{hint:d}", "malformed template: Unknown format code 'd'"),
        ("{hint:{width}}", r"unknown placeholder \{width\}"),
        (None, "a template must be a string, got NoneType"),
    ],
)
def test_bad_templates(template, match):
    with pytest.raises(ConfigError, match=match) as info:
        check_template(template, ALLOWED, "role 'user': option 'system_prompt'")
    assert str(info.value).startswith("role 'user': option 'system_prompt': ") and "\n" not in str(info.value)


def test_good_templates():
    for template in ("", "plain", "{profile} / {personality} / {hint!r} / {{literal}} / {hint:>10}"):
        check_template(template, ALLOWED, "x")


def test_unavailable_placeholders_say_why():
    with pytest.raises(ConfigError, match=r"placeholder \{profile\} cannot be used: not shown \(allowed: \{hint\}"):
        check_template("{profile}", {"hint"}, "x", unavailable={"profile": "not shown"})


def test_format_template_is_one_line_at_call_time():
    assert format_template("a {x}", {"x": "b"}, "w") == "a b"
    with pytest.raises(ConfigError, match=r"^w: unknown placeholder \{y\} \(allowed: \{x\}"):
        format_template("{y}", {"x": "b"}, "w")
    with pytest.raises(ConfigError, match=r"^w: positional placeholder"):
        format_template("{}", {"x": "b"}, "w")
    with pytest.raises(ConfigError, match=r"^w: malformed template"):
        format_template("{x", {"x": "b"}, "w")


def test_role_templates_follow_the_role_fields():
    role = StrictRole("mine", ScriptedClient(), system_prompt="{mood} {profile}")
    role.check_templates()  # the role's own field is allowed
    with pytest.raises(ConfigError, match=r"^role 'mine': option 'system_prompt': placeholder \{profile\} cannot"):
        role.check_templates(sees_persona=False)
    with pytest.raises(ConfigError, match=r"role 'mine': option 'system_prompt': unknown placeholder \{mode\}"):
        StrictRole("mine", ScriptedClient(), system_prompt="{mode}").check_templates()


def test_judge_user_prompt_is_a_template_option():
    judge = PreferenceJudge("judge", ScriptedClient(), user_prompt="{user_message}\n{candidates}\n{instruction}")
    judge.check_templates()
    assert set(judge.template_fields(probe_view())) == {"system_prompt", "user_prompt"}
    bad = PreferenceJudge("judge", ScriptedClient(), user_prompt="{user_mesage} {candidates}")
    with pytest.raises(ConfigError, match=r"option 'user_prompt': unknown placeholder \{user_mesage\} \(allowed: "
                       r"\{candidates\}, \{instruction\}, \{user_message\}"):  # fmt: skip
        bad.check_templates()


def test_paper_exact_judge_takes_no_prompts():
    with pytest.raises(ConfigError, match="paper_exact uses the authors' prompt"):
        PreferenceJudge("judge", ScriptedClient(), paper_exact=True, user_prompt="{candidates}")
    with pytest.raises(ConfigError, match="paper_exact uses the authors' prompt"):
        PreferenceJudge("judge", ScriptedClient(), paper_exact=True, system_prompt="Judge.")


def test_a_bad_template_fails_in_one_line_at_call_time_too():
    role = StrictRole("mine", ScriptedClient(), system_prompt="{nope}")
    with pytest.raises(ConfigError, match=r"role 'mine': option 'system_prompt': unknown placeholder \{nope\}"):
        role.system(probe_view())


@register_role("test_opts_typed")
class TypedRole(PromptRole):
    """Options of types a config file cannot hold as such are left for the role to check."""

    def __init__(self, name, client, *, vocab: Path | None = None, words: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(name, client, **kwargs)


def test_only_config_native_types_are_checked():
    check_role_options("x", "test_opts_typed", {"vocab": "/some/file.txt", "words": ["a", "b"]})


def test_placeholder_names_with_line_breaks_stay_on_one_line():
    with pytest.raises(ConfigError, match=r"unknown placeholder \{a\\nb\}") as info:
        check_template("{a\nb}", ALLOWED, "x")
    assert "\n" not in str(info.value)
