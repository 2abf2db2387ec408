"""The judge parsers: exactly one asserted candidate or in-range score, and nothing else."""

from __future__ import annotations

import math

import pytest
from autogen_core.models import ChatCompletionTokenLogprob, TopLogprob

from aloekit.agents.parsing import (
    expected_value,
    option_distribution,
    option_probabilities,
    parse_score,
    parse_verdict,
)

# (text, candidates, labels, expected): the cases found in issue 11 first, then the rest of the class.
VERDICTS = [
    # issue 11: must parse
    ("2.", 2, "numbers", 2),
    # issue 11: must be invalid
    ("-1", 2, "numbers", None),
    ("not Message 1", 2, "numbers", None),
    ("Message one or two", 2, "numbers", None),
    ("First of all, I'd pick 2", 2, "numbers", 2),
    # plain assertions
    ("Message 1", 2, "numbers", 1),
    ("Message 2", 2, "numbers", 2),
    ("1", 2, "numbers", 1),
    ("2", 2, "numbers", 2),
    ("1.", 2, "numbers", 1),
    ("First.", 2, "numbers", 1),
    ("second", 2, "numbers", 2),
    ("The second one.", 2, "numbers", 2),
    ("**Message 2**", 2, "numbers", 2),
    ("message two", 2, "numbers", 2),
    ("two", 2, "numbers", 2),
    ("I'd pick the second reply.", 2, "numbers", 2),
    ("Reply #1 fits best", 2, "numbers", 1),
    ("Response 2 is better suited to her.", 2, "numbers", 2),
    ('{"choice": 2}', 2, "numbers", 2),
    ('{"preferred": "Message 1"}', 2, "numbers", 1),
    ("Message 3", 3, "numbers", 3),
    ("Message 2 (the user is 30 and loves jazz)", 2, "numbers", 2),
    ("Message 1\n\nIt mentions her bakery.", 2, "numbers", 1),
    ("My choice is 2", 2, "numbers", 2),
    ("The second reply is better.", 2, "numbers", 2),
    ("The first message is more personal.", 2, "numbers", 1),
    ("The answer is Message 2", 2, "numbers", 2),
    ("Message 2 - it answers the question", 2, "numbers", 2),
    ("Message 2 (it doesn't repeat itself)", 2, "numbers", 2),
    ("No, Message 2.", 2, "numbers", 2),
    ("Message 2 for her 30 years in the job", 2, "numbers", 2),
    ("Message 1 is worse than 2", 2, "numbers", None),
    ("Message 1 loses to 2", 2, "numbers", None),
    # negations, hedges, several candidates, ranges: invalid
    ("Message 1, not Message 2", 2, "numbers", None),
    ("I wouldn't pick Message 1", 2, "numbers", None),
    ("Neither message", 2, "numbers", None),
    ("None of them", 2, "numbers", None),
    ("Both are good", 2, "numbers", None),
    ("Either works", 2, "numbers", None),
    ("It's a tie", 2, "numbers", None),
    ("1 or 2", 2, "numbers", None),
    ("1-2", 2, "numbers", None),
    ("1/2", 2, "numbers", None),
    ("Message 1 and Message 2", 2, "numbers", None),
    ("Message 1 or 2", 2, "numbers", None),
    ("first or second", 2, "numbers", None),
    ("Message 1 is good but the second is better", 2, "numbers", None),
    ("1 2", 2, "numbers", None),
    # out of range, malformed numbers, nothing
    ("Message 3", 2, "numbers", None),
    ("0", 2, "numbers", None),
    ("1.5", 2, "numbers", None),
    ("Message -1", 2, "numbers", None),
    ("Message A", 2, "numbers", None),
    ("", 2, "numbers", None),
    ("I don't know", 2, "numbers", None),
    ("The one about baking", 2, "numbers", None),
    ('{"choice": 2, "score": 1}', 2, "numbers", None),
    ("[1, 2]", 2, "numbers", None),
    # letters
    ("B", 2, "letters", 2),
    ("b", 2, "letters", 2),
    ("Message A", 2, "letters", 1),
    ("A (Santa Maria)", 2, "letters", 1),
    ("Reply B is better", 2, "letters", 2),
    ('{"choice": "B"}', 2, "letters", 2),
    ("(A)", 2, "letters", 1),
    ("**B**", 2, "letters", 2),
    ("I pick B", 2, "letters", 2),
    ("The answer is B", 2, "letters", 2),
    ("The better response is B", 2, "letters", 2),
    ("Message B. A friend would say so.", 2, "letters", 2),
    ("Message A is better than B", 2, "letters", None),
    ("C", 2, "letters", None),
    ("Message C", 2, "letters", None),
    ("A or B", 2, "letters", None),
    ("Message A, not B", 2, "letters", None),
    ("no idea", 2, "letters", None),
    ("Message 3", 2, "letters", None),
    ("Message 1", 2, "letters", None),
]

SCORES = [
    # issue 11: must parse
    ("4.", 4),
    ("I would rate this a 4.", 4),
    # issue 11: must be invalid
    ("Score: 5/10", None),
    ("-3", None),
    # plain scores
    ("4", 4),
    ("1", 1),
    ("5", 5),
    ("Score: 4", 4),
    ("score:4", 4),
    ("**Score:** 2", 2),
    ("Rating: 3", 3),
    ("4/5", 4),
    ("4 / 5", 4),
    ("I'd give it 3 out of 5.", 3),
    ('{"score": 5}', 5),
    ('{"rating": "2"}', 2),
    ("Score (1-5): 4", 4),
    ("On a scale of 1 to 5, I'd give it a 2.", 2),
    ("four", 4),
    ("Score: 4 (she is 30 and runs a bakery)", 4),
    ("I'd give this reply a 5 because it mentions jazz.", 5),
    ("3\n\nThe reply is friendly.", 3),
    ("Score: 4. The reply does not mention her job.", 4),
    ("The reply scores 4 and I would rate 3", None),
    ("I would not give it a 5", None),
    ("Not great: 2", 2),
    # invalid
    ("between 3 and 4", None),
    ("3-4", None),
    ("3 or 4", None),
    ("3 to 4", None),
    ("4.5", None),
    ("Score: 4.5", None),
    ("7", None),
    ("0", None),
    ("Score: 6", None),
    ("8/10", None),
    ("6/5", None),
    ("not a 5", None),
    ("great reply", None),
    ("", None),
    ("1-5", None),
    ("It deserves 4, maybe 3", None),
    # hedged or contradicted beside a label: once read as the labelled score
    ("I give it a 2, maybe 3", None),
    ("Score: 4, or maybe 5", None),
    ("Rating: 2 (maybe 3)", None),
    ("4 out of 5 would be too generous; 2", None),
    ("It depends; score 3", None),
    ("not sure, 4", None),
    ("Score: 4, not 2", None),
    ("Rate the reply from 1 (not tailored to this person at all) to 5 (perfectly tailored)", None),
    ("I rate it 4/5.", 4),
    ("Score: 4 (perhaps the best of the three replies)", None),
    # other sentences explain, numbers and hedges included
    ("Score: 4. She has 2 kids.", 4),
    ("Score: 4. Turn 3 was better.", 4),
    ("Score: 4\n\nReason: mentions her 3 children", 4),
    ("The user is unclear about goals. Score: 4", 4),
    ("Rating: 5. Maybe add more detail next time.", 5),
    ("3\n\nMaybe it could be warmer.", 3),
    ('{"score": 4, "rating": 3}', None),
]


@pytest.mark.parametrize(("text", "n", "labels", "expected"), VERDICTS)
def test_verdict_table(text, n, labels, expected):
    assert parse_verdict(text, n, labels) == expected


@pytest.mark.parametrize(("text", "expected"), SCORES)
def test_score_table(text, expected):
    assert parse_score(text) == expected


def test_the_tables_cover_at_least_sixty_cases():
    assert len(VERDICTS) + len(SCORES) >= 60


def _logprobs(chosen: str, alternatives: dict[str, float]) -> list[ChatCompletionTokenLogprob]:
    tops = [TopLogprob(logprob=math.log(p), bytes=list(t.encode())) for t, p in alternatives.items()]
    return [ChatCompletionTokenLogprob(token=chosen, logprob=math.log(alternatives[chosen]), top_logprobs=tops)]


def test_option_distribution_sums_token_variants_and_renormalises():
    logprobs = _logprobs("4", {"4": 0.4, " 4": 0.1, "5": 0.25, "Score": 0.2, "1": 0.05})
    assert sum(option_probabilities(logprobs, ["1", "2", "3", "4", "5"]).values()) == pytest.approx(0.8)
    dist = option_distribution(logprobs, ["1", "2", "3", "4", "5"])
    assert dist is not None
    assert dist["4"] == pytest.approx(0.5 / 0.8) and dist["2"] == 0.0
    assert sum(dist.values()) == pytest.approx(1.0)
    assert expected_value(dist) == pytest.approx((1 * 0.05 + 4 * 0.5 + 5 * 0.25) / 0.8)


def test_option_distribution_is_none_when_no_option_appears():
    assert option_distribution(_logprobs("Hello", {"Hello": 0.9, "Hi": 0.1}), ["1", "2"]) is None
    assert option_distribution(None, ["1", "2"]) is None


def test_a_sliver_on_the_options_is_no_answer():
    # The model answered "Sorry": its 0.001 on "5" once made a score of 5.0.
    assert option_distribution(_logprobs("Sorry", {"Sorry": 0.999, "5": 0.001}), ["1", "2", "3", "4", "5"]) is None
    assert option_distribution(_logprobs(" 5", {" 5": 0.6, "Sorry": 0.3, "4": 0.1}), ["4", "5"]) == {
        "4": pytest.approx(0.1 / 0.7),
        "5": pytest.approx(0.6 / 0.7),
    }


def test_letter_options_match_case_insensitively():
    dist = option_distribution(_logprobs("a", {"a": 0.3, "B": 0.3}), ["A", "B"])
    assert dist == {"A": pytest.approx(0.5), "B": pytest.approx(0.5)}
