"""The preference judge: which candidate reply would this persona prefer?"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel

from aloekit.agents.base import (
    Answer,
    CallRecord,
    Message,
    PromptRole,
    RoleOutput,
    RoleView,
    format_template,
    register_role,
)
from aloekit.agents.parsing import parse_verdict
from aloekit.errors import ConfigError

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

Which message would this person prefer? {instruction}"""
JUDGE_USER_FIELDS = frozenset({"user_message", "candidates", "instruction"})
"""Placeholders a judge's ``user_prompt`` may use."""

TEXT_INSTRUCTION = 'Answer with the message {kind} only, for example "Message {example}".'
CHOICE_INSTRUCTION = "Answer with the message {kind} only: {choices}."
STRICT_SUFFIX = "\n\nAnswer with exactly one of: {choices}. Write nothing else."

# The authors' judge (data_generation.py in their repository), reworded but with the same content and
# protocol: one user message, profile and personality, the hinted reply always first, no user message,
# and an answer of 'first' or 'second' compared as an exact string.
PAPER_JUDGE_PROMPT = """You are given a user's profile and personality descriptions and two messages sent to the user. \
Decide which message this user would prefer, based on their profile and personalities.
The user's profile and personality descriptions:
Profile: {profile}
Personalities: {personality}

The two messages to compare:
Message 1: {first}
Message 2: {second}
Do not explain how you decided. If Message 1 is preferred, output 'first'. \
If Message 2 is preferred, output 'second'."""

INVALID = -1
ScoreMode = Literal["text", "expected"]
LabelStyle = Literal["numbers", "letters"]


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
    probabilities: list[float] | None = None
    """``score_mode="expected"``: P(each candidate is preferred), original order (both orders averaged)."""
    defaulted: bool = False
    """``paper_exact``: the answer was not exactly 'first', so the authors' rule gave the un-hinted reply the win."""


@register_role("preference_judge")
class PreferenceJudge(PromptRole):
    """Sees the true persona and the candidates; shows them in a random order, recorded in the verdict.

    ``labels="letters"`` shows "Message A", "Message B"... instead of numbers: very small models
    answer with a valid letter far more often than with a valid number. ``score_mode="expected"``
    constrains the answer to one label and reads P(label) from the first token's logprobs: the
    preferred reply is the most probable one and the probabilities are stored (a judge that cannot
    return logprobs gives no verdict). ``both_orders`` asks again with the order reversed and records
    whether the two answers agree (the flip rate is the share that disagree); in expected mode the
    two orders' probabilities are averaged, which cancels a constant position bias.

    ``paper_exact`` reproduces the authors' judge for comparison runs: their prompt, the hinted reply
    always shown first, no retry, and exact-match semantics: the hinted reply wins only when the answer
    is exactly ``first``; any other answer, nonsense included, is a win for the un-hinted reply.
    """

    answers: ClassVar[frozenset[Answer]] = frozenset({"verdict"})

    system_prompt = JUDGE_SYSTEM_PROMPT

    def __init__(
        self,
        name: str,
        client: ChatCompletionClient,
        *,
        paper_exact: bool = False,
        both_orders: bool = False,
        user_prompt: str = JUDGE_USER_PROMPT,
        labels: LabelStyle = "numbers",
        score_mode: ScoreMode = "text",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, client, **kwargs)
        if labels not in ("numbers", "letters"):
            raise ConfigError(f"judge labels must be 'numbers' or 'letters', got {labels!r}")
        if score_mode not in ("text", "expected"):
            raise ConfigError(f"judge score_mode must be 'text' or 'expected', got {score_mode!r}")
        if paper_exact and (score_mode != "text" or labels != "numbers" or both_orders):
            raise ConfigError(
                "paper_exact reproduces the authors' text judge: it takes no score_mode, labels or both_orders"
            )
        if paper_exact and (user_prompt != JUDGE_USER_PROMPT or kwargs.get("system_prompt") is not None):
            raise ConfigError("paper_exact uses the authors' prompt: it takes no system_prompt or user_prompt")
        self.labels = labels
        self.score_mode = score_mode
        self.paper_exact = paper_exact
        self.both_orders = both_orders
        self.user_prompt = user_prompt

    def template_fields(self, view: RoleView) -> dict[str, tuple[str, frozenset[str]]]:
        """The system prompt's fields, and ``user_prompt`` over the user message, candidates and instruction."""
        return {**super().template_fields(view), "user_prompt": (self.user_prompt, JUDGE_USER_FIELDS)}

    def order(self, view: RoleView) -> list[int]:
        """Presentation order: shuffled from (seed, conversation index, turn), or hinted-first for paper_exact."""
        order = list(range(len(view.candidates)))
        if self.paper_exact:
            return sorted(order, key=lambda i: not (view.hinted[i] if view.hinted else i == 0))
        random.Random(view.draw_seed("judge-order")).shuffle(order)
        return order

    def label(self, position: int) -> str:
        """How the candidate shown at ``position`` (0-based) is named: '1', '2'... or 'A', 'B'..."""
        if self.labels == "letters" and position >= 26:
            raise ConfigError(f"role {self.name!r}: labels 'letters' name at most 26 candidates; use 'numbers'")
        return chr(ord("A") + position) if self.labels == "letters" else str(position + 1)

    def render(self, view: RoleView) -> list[Message]:
        """The prompt with the candidates in their own order (each call shows them in :meth:`order`)."""
        return self.render_order(view, list(range(len(view.candidates))))

    def render_order(self, view: RoleView, order: list[int], strict: bool = False) -> list[Message]:
        """Messages showing the candidates in ``order``."""
        if self.paper_exact:
            first, second = (view.candidates[c] for c in order)
            prompt = PAPER_JUDGE_PROMPT.format(**self.fields(view), first=first, second=second)
            return [{"role": "user", "content": prompt}]
        labels = [self.label(i) for i in range(len(order))]
        listed = "\n\n".join(f"Message {lab}:\n{view.candidates[c]}" for lab, c in zip(labels, order, strict=True))
        kind = "letter" if self.labels == "letters" else "number"
        if self.score_mode == "expected":
            instruction = CHOICE_INSTRUCTION.format(kind=kind, choices=" or ".join(labels))
        else:
            instruction = TEXT_INSTRUCTION.format(kind=kind, example=labels[0])
        values = {"user_message": view.user_message or "", "candidates": listed, "instruction": instruction}
        prompt = format_template(self.user_prompt, values, f"role {self.name!r}: option 'user_prompt'")
        if strict:
            prompt += STRICT_SUFFIX.format(choices=", ".join(f"Message {lab}" for lab in labels))
        return [{"role": "system", "content": self.system(view)}, {"role": "user", "content": prompt}]

    async def _ask(self, view: RoleView, order: list[int], calls: list[CallRecord]) -> tuple[int, list[float] | None]:
        """One verdict in ``order``: (preferred candidate or -1, P(candidate) in original order or None).

        Retried once with a stricter instruction when the answer (or its distribution) is unusable.
        """
        labels = [self.label(i) for i in range(len(order))]
        for strict in (False, True):
            if self.score_mode == "expected":
                call = await self.complete(self.render_order(view, order, strict), view, choices=labels, logprobs=True)
                calls.append(call)
                if call.distribution is not None:
                    probabilities = [0.0] * len(order)
                    for position, candidate in enumerate(order):
                        probabilities[candidate] = call.distribution[labels[position]]
                    return _argmax(probabilities), probabilities
            else:
                call = await self.complete(self.render_order(view, order, strict), view)
                calls.append(call)
                choice = parse_verdict(call.raw, len(order), self.labels)
                if choice is not None:
                    return order[choice - 1], None
        return INVALID, None

    async def _paper_verdict(self, view: RoleView) -> RoleOutput:
        if len(view.candidates) != 2 or (view.hinted and sum(view.hinted) != 1):
            raise ConfigError("paper_exact needs exactly two candidates, one of them written with the hint")
        order = self.order(view)
        call = await self.complete(self.render_order(view, order), view)
        hinted_wins = call.raw == "first"  # the authors' test: exact string, no stripping
        verdict = Verdict(preferred=order[0] if hinted_wins else order[1], order=order, raw=[call.raw],
                          defaulted=call.raw != "second" and not hinted_wins)  # fmt: skip
        return RoleOutput(text=call.raw.strip(), value=verdict, calls=[call])

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Judge the candidates; the value is a :class:`Verdict`."""
        if self.paper_exact:
            return await self._paper_verdict(view)
        calls: list[CallRecord] = []
        order = self.order(view)
        preferred, probabilities = await self._ask(view, order, calls)
        agreement = None
        if self.both_orders:
            second, second_probabilities = await self._ask(view, order[::-1], calls)
            agreement = preferred != INVALID and preferred == second
            if probabilities is not None and second_probabilities is not None:
                probabilities = [(a + b) / 2 for a, b in zip(probabilities, second_probabilities, strict=True)]
                preferred = _argmax(probabilities)
        verdict = Verdict(preferred=preferred, order=order, raw=[c.raw for c in calls], retried=len(calls) > (
            2 if self.both_orders else 1), agreement=agreement, probabilities=probabilities)  # fmt: skip
        return RoleOutput(text=calls[0].raw.strip(), value=verdict, calls=calls)


def _argmax(probabilities: list[float]) -> int:
    """The most probable candidate; -1 for an exact tie (no preference to learn from)."""
    best = max(probabilities)
    winners = [i for i, p in enumerate(probabilities) if p == best]
    return winners[0] if len(winners) == 1 else INVALID
