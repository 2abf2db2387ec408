"""Reading a judge's answer: exactly one asserted candidate or one in-range score, and nothing else.

The parsers are strict on purpose. A verdict that negates, hedges, names a range or several
candidates, or a score that is negative, fractional or on another scale, is *invalid*: the judge is
asked once more, then the turn is counted as unlabelled or unscored. A lenient parser that guesses
turns a judge's nonsense into training labels.

With ``score_mode = "expected"`` a judge's answer is read from its next-token distribution instead
(:func:`option_probabilities`): the probability-weighted mean of the allowed answers (G-Eval).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_WORD_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4}
_JSON_KEYS = ("choice", "preferred", "answer", "message", "winner", "verdict", "score", "rating", "value")

# Words that make a whole answer something other than one plain assertion.
_HEDGE = re.compile(
    r"\b(?:both|either|neither|nor|none|tie|tied|equal|equally|depends|unsure|unclear|undecided|maybe)\b"
)
# A negation in the clause just before a mention negates it: "not Message 1", "wouldn't pick 2", "not a 5".
_NEGATION = re.compile(r"\b(?:not|no|never|cannot)\b|n't\b")
_CLAUSE_END = re.compile(r"[.;:!?,()\n]")
# "First of all, I'd pick 2": "first" here is not a candidate.
_DISCOURSE = re.compile(r"\b(?:first of all|first off|at first(?: glance)?|firstly|first and foremost)\b", re.I)
_CANDIDATE_TOKEN = r"(?:-?\d+(?:\.\d+)?|one|two|three|four|five|first|second|third|fourth|fifth)"
_ALTERNATIVE = re.compile(
    rf"{_CANDIDATE_TOKEN}\s*(?:[-\u2013\u2014/]|\bor\b|\band\b|\bto\b|\bvs\.?|\bversus\b)\s*"
    rf"(?:message\s*|reply\s*|response\s*|option\s*)?{_CANDIDATE_TOKEN}\b"
)
_LETTER_ALTERNATIVE = re.compile(
    r"\b[a-e]\s*(?:[-\u2013\u2014/]|\bor\b|\band\b|\bvs\.?|\bversus\b)\s*(?:message\s*|reply\s*|option\s*)?[a-e]\b"
)
_LABEL_WORDS = r"(?:message|reply|response|option|candidate|answer|choice)"
_LABELLED = re.compile(
    rf"\b{_LABEL_WORDS}(?![a-z])\s*#?\s*\(?\s*(-?\d+(?:\.\d+)?|one|two|three|four|five|[a-z])(?!\w|\.\d)"
)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w]|\.\d)")
_ORDINAL = re.compile(r"\b(first|second|third|fourth|fifth|1st|2nd|3rd|4th)\b")
_UPPER_LETTER = re.compile(r"(?<![\w'])([A-Z])(?![\w'])")
_MARKUP = re.compile(r"[*_`\"\u201c\u201d]")

# Scores: the scale itself ("Score (1-5):", "on a scale of 1 to 5") is not an answer.
_SCALE = re.compile(r"\(?\s*(?:(?:on\s+)?a\s+scale\s+(?:of|from)\s+|from\s+)?\b1\s*(?:-|\u2013|to)\s*5\b\s*\)?(?!\s*/)")
_FRACTION = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+)\b")
_SCORE_RANGE = re.compile(
    r"\b\d+(?:\.\d+)?\s*(?:-|\u2013|\bto\b|\bor\b|\band\b)\s*\d+(?:\.\d+)?\b"
    r"|\b(?:one|two|three|four|five)\s+(?:to|or|and)\s+(?:one|two|three|four|five)\b"
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
# A score that hedges ("a 2, maybe 3", "not sure, 4", "it depends; score 3") asserts no one score; the word
# counts in the score's own sentence only ("Score: 5. Maybe add more detail next time." is a 5).
_SCORE_HEDGE = re.compile(r"\b(?:maybe|perhaps|possibly|depends|unsure|unclear|undecided|not sure)\b")
_SCORE_LABELLED = re.compile(
    r"\b(?:scores?|scored|ratings?|rates?|rated|grades?|gives?|gave|giving|assigns?)\b[^\d\n.!?;]{0,24}?"
    r"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w]|\.\d)"
)


def _clean(text: str) -> str:
    return " ".join(_MARKUP.sub(" ", text).split())


def _clean_lines(text: str) -> str:
    """:func:`_clean`, keeping line breaks: a score's sentence ends at one ("Score: 4" then "Reason: ...")."""
    return "\n".join(" ".join(line.split()) for line in _MARKUP.sub(" ", text).splitlines() if line.strip())


def _sentence(text: str, position: int) -> tuple[int, int]:
    """The span of the sentence of ``text`` holding ``position``: up to a full stop, ! or ? before a space, or a
    line break (not a semicolon or comma: "4 out of 5 would be generous; 2" is one answer)."""
    start = max((m.end() for m in _SENTENCE_END.finditer(text, 0, position)), default=0)
    end = next((m.start() for m in _SENTENCE_END.finditer(text, position)), len(text))
    return start, end


def _json_value(text: str) -> str | None:
    """The answer field of a JSON object such as ``{"choice": 2}``, as text; None if not such JSON."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if isinstance(data, dict):
        found = [str(data[k]) for k in _JSON_KEYS if k in data]
        return found[0] if len(found) == 1 else ""
    return ""  # a list or several keys is not one answer


def _as_int(token: str) -> int | None:
    """An integer token; None for a negative or fractional one (never a valid label or score)."""
    if token.startswith("-") or "." in token:
        return None
    return int(token)


def _negated(text: str, start: int) -> bool:
    """Whether the clause leading up to ``start`` negates what follows."""
    return bool(_NEGATION.search(_CLAUSE_END.split(text[max(0, start - 40) : start])[-1]))


def _single(mentions: list[tuple[int | None, int]], text: str, low: int, high: int) -> int | None:
    """The one value asserted: every mention (value, position) names it, none is negated, it is in range."""
    if not mentions or any(v is None or _negated(text, start) for v, start in mentions):
        return None
    distinct = {v for v, _ in mentions}
    if len(distinct) != 1:
        return None
    value = distinct.pop()
    return value if value is not None and low <= value <= high else None


def _outside(spans: list[tuple[int, int]], match: re.Match[str]) -> bool:
    return all(match.end() <= a or match.start() >= b for a, b in spans)


def parse_verdict(text: str, n_candidates: int, labels: str = "numbers") -> int | None:
    """The 1-based candidate ``text`` asserts ('Message 1', 'First.', '2.', JSON...), or None.

    ``labels="letters"`` reads "Message A", "B", "(A)"... instead of numbers. None whenever the answer
    hedges, negates a candidate, names a range or more than one candidate, or one that does not exist.
    """
    if (inner := _json_value(text)) is not None:
        return parse_verdict(inner, n_candidates, labels) if inner else None
    original = _DISCOURSE.sub(lambda m: " " * len(m.group()), _clean(text))
    lowered = original.lower()
    if not lowered.strip() or _HEDGE.search(lowered) or _ALTERNATIVE.search(lowered):
        return None
    if labels == "letters" and _LETTER_ALTERNATIVE.search(lowered):
        return None
    mentions: list[tuple[int | None, int]] = []
    labelled = list(_LABELLED.finditer(lowered))
    for m in labelled:
        token = m.group(1)
        if token.isalpha() and len(token) == 1:
            value = ord(token) - ord("a") + 1 if labels == "letters" else None
        elif token in _WORD_NUMBERS:
            value = _WORD_NUMBERS[token] if labels == "numbers" else None
        else:
            value = _as_int(token) if labels == "numbers" else None
        mentions.append((value, m.start()))
    spans = [m.span() for m in labelled]
    mentions += [(_ORDINALS[m.group(1)], m.start()) for m in _ORDINAL.finditer(lowered) if _outside(spans, m)]
    if labels == "letters":
        for m in _UPPER_LETTER.finditer(original):
            sentence_start = not original[: m.start()].strip() or original[: m.start()].rstrip()[-1] in ".!?"
            if _outside(spans, m) and m.group(1) != "I" and not (labelled and sentence_start):
                value = ord(m.group(1)) - ord("A") + 1
                if not labelled or value <= n_candidates:  # beside a label, only other valid labels conflict
                    mentions.append((value, m.start()))
        if (lone := lowered.strip(" .!")) and len(lone) == 1 and lone.isalpha():  # a lone lowercase "b"
            mentions.append((ord(lone) - ord("a") + 1, 0))
    else:
        for m in _NUMBER.finditer(lowered):
            value = _as_int(m.group())
            # Beside a label, a bare number conflicts only if it could name a candidate ("Message 1, not 2");
            # "Message 2 for her 30 years" keeps its label.
            if _outside(spans, m) and (not labelled or (value is not None and 1 <= value <= n_candidates)):
                mentions.append((value, m.start()))
        if (word := lowered.strip(" .!")) in _WORD_NUMBERS:
            mentions.append((_WORD_NUMBERS[word], 0))
    return _single(mentions, lowered, 1, n_candidates)


def parse_letter_verdict(text: str, n_candidates: int) -> int | None:
    """:func:`parse_verdict` for replies labelled A, B, ..."""
    return parse_verdict(text, n_candidates, labels="letters")


def parse_score(text: str, low: int = 1, high: int = 5) -> int | None:
    """A score from '4', '4.', 'Score: 4', '4/5', 'I would rate this a 4.' or ``{"score": 4}``, else None.

    None for a negated score ('not a 5'), a hedge in its sentence ('2, maybe 3'), a range ('3-4', 'between 3
    and 4'), another scale ('5/10'), a negative or fractional number, a number outside ``low``..``high``, two
    different labelled numbers, or a number that could be a score in a labelled score's sentence ('4 out of 5
    would be generous; 2', an echoed 'rate from 1 ... to 5'). Other sentences may explain ('Score: 4. She has
    2 kids.').
    """
    if (inner := _json_value(text)) is not None:
        return parse_score(inner, low, high) if inner else None
    lowered = _SCALE.sub(lambda m: " " * len(m.group()), _clean_lines(text).lower())
    if not lowered.strip() or _SCORE_RANGE.search(lowered):
        return None
    fractions = list(_FRACTION.finditer(lowered))
    labelled: list[tuple[int | None, int]] = [
        (_as_int(m.group(1)) if int(m.group(2)) == high else None, m.start()) for m in fractions
    ]
    spans = [m.span() for m in fractions]
    said = [m for m in _SCORE_LABELLED.finditer(lowered) if _outside(spans, m)]
    labelled += [(_as_int(m.group(1)), m.start(1)) for m in said]
    if labelled:
        # In a labelled score's sentence, a bare number conflicts if it could be a score ("Score: 4, not 2");
        # "Score: 4 (she is 30)" keeps its label, and other sentences may explain.
        held = {_sentence(lowered, start) for _, start in labelled}
        spans += [m.span() for m in said]
        bare = [(_as_int(m.group()), m.start()) for m in _NUMBER.finditer(lowered) if _outside(spans, m)]
        mentions = labelled + [(value, start) for value, start in bare if value is not None and low <= value <= high
                               and _sentence(lowered, start) in held]  # fmt: skip
    else:
        mentions = [(_as_int(m.group()), m.start()) for m in _NUMBER.finditer(lowered)]
        if (word := lowered.strip(" .!")) in _WORD_NUMBERS:
            mentions.append((_WORD_NUMBERS[word], 0))
    if any(_SCORE_HEDGE.search(lowered, *_sentence(lowered, start)) for _, start in mentions):
        return None
    return _single(mentions, lowered, low, high)


# Probability-weighted answers ----------------------------------------------------------------------------


def option_probabilities(logprobs: Sequence[Any] | None, options: Sequence[str]) -> dict[str, float] | None:
    """P(option) from the first generated token's ``top_logprobs``, as the model gave them (not renormalised).

    ``logprobs`` is autogen's ``CreateResult.logprobs``; tokens are read from their UTF-8 ``bytes``
    (autogen keeps only those for the alternatives). Tokens equal to an option once whitespace is
    stripped (letters: case-insensitively) add to it. None when there are no logprobs, when the token the
    model chose is no option (it did not answer with one: a sliver of probability on the options, "5" at
    0.001 beside "Sorry" at 0.999, would otherwise make the whole answer), or when no option appears.
    """
    if not logprobs:
        return None
    first = logprobs[0]
    alternatives = list(getattr(first, "top_logprobs", None) or [])
    token = getattr(first, "token", None)
    canonical = {_canon(o): o for o in options}
    if token is None or _canon(token) not in canonical:
        return None
    pairs: list[tuple[str, float]] = []
    for alt in alternatives:
        raw = getattr(alt, "bytes", None)
        text = bytes(raw).decode("utf-8", errors="replace") if raw else getattr(alt, "token", None)
        if text is not None:
            pairs.append((text, float(alt.logprob)))
    if not pairs:  # no alternatives returned: the chosen token alone
        pairs.append((token, float(first.logprob)))
    mass = dict.fromkeys(options, 0.0)
    for text, logprob in pairs:
        option = canonical.get(_canon(text))
        if option is not None and math.isfinite(logprob):
            mass[option] += math.exp(logprob)
    return mass if sum(mass.values()) > 0 else None


def option_distribution(logprobs: Sequence[Any] | None, options: Sequence[str]) -> dict[str, float] | None:
    """:func:`option_probabilities` renormalised over ``options``: the choice among them alone (None as there)."""
    probabilities = option_probabilities(logprobs, options)
    return None if probabilities is None else renormalised(probabilities)


def renormalised(probabilities: Mapping[str, float]) -> dict[str, float]:
    """``probabilities`` divided by their sum: the distribution of a choice made among these options alone."""
    total = sum(probabilities.values())
    return {option: p / total for option, p in probabilities.items()}


def _canon(text: str) -> str:
    return text.strip().upper()


def expected_value(distribution: Mapping[str, float]) -> float:
    """The probability-weighted mean of numeric options (``{"1": 0.2, "5": 0.8}`` -> 4.2)."""
    return sum(float(option) * p for option, p in distribution.items())
