"""The preference judge: which candidate reply would this persona prefer?"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel

from aloekit.agents.base import CallRecord, Message, PromptRole, RoleOutput, RoleView, register_role

JUDGE_SYSTEM_PROMPT = """You decide which reply a particular person would prefer in a chat.

The person:
Profile: {profile}
Personality: {personality}

Prefer the reply whose content fits this person's life and interests, whose style fits their
personality, and which sounds like a natural, engaging, concise human message."""

JUDGE_USER_PROMPT = """The person just wrote:
{user_message}

Candidate replies:
{candidates}

Which message would this person prefer? Answer with the message number only, for example "Message 1"."""

STRICT_SUFFIX = "\n\nAnswer with exactly one of: {choices}. Write nothing else."

INVALID = -1
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "one": 1, "two": 2, "three": 3}
_LABELLED = re.compile(r"\b(?:message|reply|response|option|candidate|answer)\s*#?\s*(\d+|one|two|three)\b")
_NUMBER = re.compile(r"(?<![\w.])(\d+)(?![\w.])")
_ORDINAL = re.compile(r"\b(first|second|third|fourth|fifth)\b")


def _json_choice(text: str) -> str | None:
    """The choice field of a JSON verdict such as ``{"choice": 2}``, as text; None if not JSON."""
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict):
        for key in ("choice", "preferred", "answer", "message", "winner", "verdict"):
            if key in data:
                return str(data[key])
    return None


_LETTER_LABELLED = re.compile(r"\b(?:message|reply|response|option|candidate|answer)\s*\(?([a-z])\b", re.I)
_LETTER = re.compile(r"(?<![\w'])([A-Z])(?![\w'])")


def parse_letter_verdict(text: str, n_candidates: int) -> int | None:
    """The 1-based choice in ``text`` when replies are labelled A, B, ...: 'B', 'Reply A', '(A)', JSON."""
    stripped = text.strip()
    if (inner := _json_choice(stripped)) is not None:
        return parse_letter_verdict(inner, n_candidates)
    valid = {chr(ord("A") + i) for i in range(n_candidates)}
    for pattern in (_LETTER_LABELLED, _LETTER):
        found = {m.upper() for m in pattern.findall(stripped)}
        if len(found) == 1:
            letter = found.pop()
            return ord(letter) - ord("A") + 1 if letter in valid else None
        if len(found) > 1:
            return None
    return None


def parse_verdict(text: str, n_candidates: int) -> int | None:
    """The 1-based choice in ``text`` ('Message 1', 'First.', '2', JSON...), or None when ambiguous or invalid."""
    stripped = text.strip()
    if (inner := _json_choice(stripped)) is not None:
        return parse_verdict(inner, n_candidates)
    lowered = stripped.lower()
    for pattern in (_LABELLED, _ORDINAL, _NUMBER):
        found = {_ORDINALS.get(m, None) or int(m) for m in pattern.findall(lowered)}
        if len(found) == 1:
            choice = found.pop()
            return choice if 1 <= choice <= n_candidates else None
        if len(found) > 1:
            return None  # names two different replies: ambiguous
    return None


class Verdict(BaseModel):
    """A judge's decision in terms of the original candidate order."""

    preferred: int
    """Index of the preferred candidate, or -1 if the judge gave no valid answer."""
    order: list[int]
    """Candidate indices in the order they were shown (first call)."""
    raw: list[str]
    """Every raw judge reply, retries and the second order included."""
    retried: bool = False
    """Whether a stricter retry was needed."""
    agreement: bool | None = None
    """With ``judge_both_orders``: whether both orders picked the same candidate (None if not asked)."""


@register_role("preference_judge")
class PreferenceJudge(PromptRole):
    """Sees the true persona and the candidates; shows them in a random order, recorded in the verdict.

    ``labels="letters"`` shows "Message A", "Message B"... instead of numbers: very small models
    answer with a valid letter far more often than with a valid number. ``paper_exact`` reproduces the
    authors' behaviour for comparison: fixed order, and only an exact "Message 1"/"Message 2" counts.
    ``both_orders`` asks again with the order reversed and records whether the two answers agree (the
    flip rate is the share that disagree).
    """

    system_prompt = JUDGE_SYSTEM_PROMPT

    def __init__(
        self,
        name: str,
        client: ChatCompletionClient,
        *,
        paper_exact: bool = False,
        both_orders: bool = False,
        user_prompt: str = JUDGE_USER_PROMPT,
        labels: str = "numbers",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, client, **kwargs)
        if labels not in ("numbers", "letters"):
            raise ValueError(f"judge labels must be 'numbers' or 'letters', got {labels!r}")
        self.letters = labels == "letters"
        self.paper_exact = paper_exact
        self.both_orders = both_orders
        self.user_prompt = user_prompt

    def order(self, view: RoleView) -> list[int]:
        """Presentation order: shuffled by a seed derived from the conversation and turn (reproducible)."""
        order = list(range(len(view.candidates)))
        if not self.paper_exact:
            random.Random(f"{view.seed}:{view.conversation_id}:{view.turn}:judge-order").shuffle(order)
        return order

    def label(self, position: int) -> str:
        """How the candidate shown at ``position`` (0-based) is named: '1', '2'... or 'A', 'B'..."""
        return chr(ord("A") + position) if self.letters else str(position + 1)

    def render_order(self, view: RoleView, order: list[int], strict: bool = False) -> list[Message]:
        """Messages showing the candidates in ``order``."""
        listed = "\n\n".join(f"Message {self.label(i)}:\n{view.candidates[c]}" for i, c in enumerate(order))
        prompt = self.user_prompt.format(user_message=view.user_message or "", candidates=listed)
        if self.letters:
            prompt = prompt.replace('"Message 1"', '"Message A"')
        if strict:
            prompt += STRICT_SUFFIX.format(choices=", ".join(f"Message {self.label(i)}" for i in range(len(order))))
        return [{"role": "system", "content": self.system(view)}, {"role": "user", "content": prompt}]

    def _parse(self, text: str, n: int) -> int | None:
        if self.paper_exact:
            exact = {f"Message {self.label(i)}": i + 1 for i in range(n)}
            return exact.get(text.strip())
        return parse_letter_verdict(text, n) if self.letters else parse_verdict(text, n)

    async def _ask(self, view: RoleView, order: list[int], calls: list[CallRecord]) -> tuple[int, bool]:
        """Ask once, and once more with a stricter instruction if the answer is invalid."""
        call = await self.complete(self.render_order(view, order))
        calls.append(call)
        choice = self._parse(call.raw, len(order))
        if choice is None and not self.paper_exact:
            call = await self.complete(self.render_order(view, order, strict=True))
            calls.append(call)
            choice = self._parse(call.raw, len(order))
            return (INVALID if choice is None else order[choice - 1]), True
        return (INVALID if choice is None else order[choice - 1]), False

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Judge the candidates; the value is a :class:`Verdict`."""
        calls: list[CallRecord] = []
        order = self.order(view)
        preferred, retried = await self._ask(view, order, calls)
        agreement = None
        if self.both_orders:
            second, retried_again = await self._ask(view, order[::-1], calls)
            retried = retried or retried_again
            agreement = preferred != INVALID and preferred == second
        verdict = Verdict(
            preferred=preferred, order=order, raw=[c.raw for c in calls], retried=retried, agreement=agreement
        )
        return RoleOutput(text=calls[0].raw.strip(), value=verdict, calls=calls)
