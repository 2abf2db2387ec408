"""``persona_similarity``: the judge without an LLM, on the shipped MiniLM embedder."""

from __future__ import annotations

import pytest

from aloekit.agents.base import RoleView
from aloekit.agents.judge import INVALID, Verdict
from aloekit.agents.scorer import Score
from aloekit.agents.similarity import PersonaSimilarity
from aloekit.errors import ConfigError
from aloekit.evaluation.task import load_eval_personas
from aloekit.graphs import RoleConfig
from aloekit.graphs.simulate import check_role

PERSONAS = load_eval_personas("builtin")
PERSONA = PERSONAS[0]
TAILORED = f"Since you mentioned it: {PERSONA.profile.text}"
GENERIC = "Okay, sounds good. Let me know if there is anything else."
OTHER = next(p for p in PERSONAS if p.profile.id != PERSONA.profile.id).profile.text


def view(*candidates: str) -> RoleView:
    return RoleView(conversation_id="c", turn=1, persona=PERSONA, user_message="hi", candidates=candidates)


@pytest.fixture(scope="module")
def judge() -> PersonaSimilarity:
    return PersonaSimilarity("judge")


async def test_a_tailored_reply_ranks_above_a_generic_one_and_another_personas(judge):
    scores = {}
    for name, reply in (("tailored", TAILORED), ("generic", GENERIC), ("other", OTHER)):
        out = await judge(view(reply))
        assert isinstance(out.value, Score) and out.value.mode == "similarity" and not out.calls
        scores[name] = out.value.score
    assert scores["tailored"] == 5.0  # closer to this person than to any of the 28 other reference personas
    assert scores["other"] < scores["generic"] < scores["tailored"]
    assert 1.0 <= scores["other"] < 3.0
    again = await judge(view(TAILORED))
    assert (
        again.value.score == scores["tailored"]
        and again.value.prompt_hash == (await judge(view(TAILORED))).value.prompt_hash
    )


async def test_as_a_preference_judge_it_picks_the_tailored_reply_in_either_order(judge):
    for candidates, right in (((TAILORED, GENERIC), 0), ((GENERIC, TAILORED), 1), ((OTHER, TAILORED), 1)):
        out = await judge(view(*candidates))
        assert isinstance(out.value, Verdict) and out.value.preferred == right
        assert out.value.agreement is True  # order plays no part: --require-agreement keeps its turns
    same = await judge(view(GENERIC, GENERIC))
    assert same.value.preferred == INVALID  # identical candidates: no preference, never a coin flip
    assert same.value.agreement is None


def test_the_other_personas_share_neither_profile_nor_personality(judge):
    ((_, _, others),) = judge.similarity_scores(PERSONA, [GENERIC])
    profiles = len({p.profile.id for p in PERSONAS})
    personalities = len({p.personality.id for p in PERSONAS})
    assert others == (profiles - 1) * (personalities - 1)


def test_options_are_checked_before_a_run():
    check_role("judge", RoleConfig(kind="persona_similarity", options={"reference": "builtin"}))
    with pytest.raises(ConfigError, match="persona_similarity.*eval set nowhere: folder not found"):
        check_role("judge", RoleConfig(kind="persona_similarity", options={"reference": "nowhere"}))
    with pytest.raises(ConfigError, match="unknown option 'labels'"):
        check_role("judge", RoleConfig(kind="persona_similarity", options={"labels": "letters"}))
    with pytest.raises(Exception, match="unknown embedder 'bert'"):
        check_role("judge", RoleConfig(kind="persona_similarity", options={"embedder": "bert"}))


async def test_it_embeds_on_the_cpu_thread(judge, monkeypatch):
    """Embedding is torch work: on the CPU thread (aloekit.cpu_thread), not on the event loop's."""
    from aloekit.cpu_thread import on_cpu_thread

    threads = []
    scores = judge.similarity_scores

    def recorded(persona, replies):
        threads.append(on_cpu_thread())
        return scores(persona, replies)

    monkeypatch.setattr(judge, "similarity_scores", recorded)
    await judge(view(TAILORED))
    assert threads == [True]
