"""The ALOE scorer: how tailored is one reply to this person, 1-5. Also the model under test."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from aloekit.agents.base import Answer, CallRecord, Message, PromptRole, RoleOutput, RoleView, register_role
from aloekit.agents.parsing import expected_value, parse_score
from aloekit.errors import ConfigError

SCORER_SYSTEM_PROMPT = """You rate how well a chat reply is tailored to one particular person.

The person:
Profile: {profile}
Personality: {personality}

Rate the reply from 1 (not tailored to this person at all) to 5 (perfectly tailored), weighing together:
- its style fits the person's personality;
- its content fits the person's profile and interests;
- it is human-like, engaging and concise.
Output only the integer."""

SCORER_USER_PROMPT = """The person wrote:
{user_message}

The reply:
{reply}

Score (1-5):"""

SCORER_STRICT_SUFFIX = "\n\nAnswer with a single digit from 1 to 5 and nothing else."
SCORE_OPTIONS = ("1", "2", "3", "4", "5")


class Score(BaseModel):
    """A scorer's decision: the score, or None when unscored (never replaced by a default)."""

    score: float | None
    """The 1-5 score; in ``expected`` mode the probability-weighted mean, so not a whole number."""
    raw: list[str]
    retried: bool
    prompt_hash: str
    mode: str = "text"
    """``text``: parsed from the answer; ``expected``: sum of k * P(k) over the first token's distribution;
    ``similarity``: the ``persona_similarity`` judge's embedding rank (no model call)."""
    distribution: dict[str, float] | None = None
    """``expected`` mode: P(score) for 1..5, renormalised over the five options."""
    option_share: float | None = None
    """``expected`` mode: the five options' share of the first token's probability before renormalising."""


ScoreMode = Literal["auto", "text", "expected"]


def resolve_score_mode(score_mode: ScoreMode, client: Any) -> Literal["text", "expected"]:
    """``auto``: expected scores where the client returns every choice's log-probability (in-process
    models), else text scores (servers and scripted clients, whose logprobs are not guaranteed)."""
    if score_mode != "auto":
        return score_mode
    return "expected" if getattr(client, "choice_logprobs", False) is True else "text"


@register_role("alignment_scorer")
class AlignmentScorer(PromptRole):
    """Sees the true persona, the current user message and the model's reply; outputs only an integer.

    ``guided_choice=True`` constrains the answer to one of 1-5 where the backend supports it.
    ``score_mode="expected"`` (G-Eval) also reads P(1..5) from the first token's logprobs and scores
    the reply with the expected value: a small judge that nearly always *answers* "1" still ranks
    replies by how much probability it puts on the higher scores. A backend that returns no logprobs
    leaves the turn unscored (counted), never scored from the text instead. ``auto`` (the default) is
    ``expected`` on a client that always returns them (the in-process backends: there the embedded 135M
    judge answers "1" to nearly every reply, so its text scores would rank nothing), else ``text``.
    """

    answers: ClassVar[frozenset[Answer]] = frozenset({"score"})

    system_prompt = SCORER_SYSTEM_PROMPT

    def __init__(
        self,
        name: str,
        client: Any,
        *,
        guided_choice: bool = False,
        score_mode: ScoreMode = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, client, **kwargs)
        if score_mode not in ("auto", "text", "expected"):
            raise ConfigError(f"scorer score_mode must be 'auto', 'text' or 'expected', got {score_mode!r}")
        self.score_mode = resolve_score_mode(score_mode, client)
        self.choices = SCORE_OPTIONS if guided_choice or self.score_mode == "expected" else None

    def render(self, view: RoleView) -> list[Message]:
        """The scoring prompt (:meth:`render_score`)."""
        return self.render_score(view)

    def render_score(self, view: RoleView, strict: bool = False) -> list[Message]:
        """The scoring prompt for the reply in ``view.candidates[0]``."""
        prompt = SCORER_USER_PROMPT.format(user_message=view.user_message or "", reply=view.candidates[0])
        if strict:
            prompt += SCORER_STRICT_SUFFIX
        return [{"role": "system", "content": self.system(view)}, {"role": "user", "content": prompt}]

    def _read(self, call: CallRecord) -> float | None:
        if self.score_mode == "expected":
            return None if call.distribution is None else round(expected_value(call.distribution), 6)
        score = parse_score(call.raw)
        return None if score is None else float(score)

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Score once; retry once with a stricter instruction if the answer is unusable."""
        messages = self.render_score(view)
        prompt_hash = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        expected = self.score_mode == "expected"
        calls = [await self.complete(messages, view, choices=self.choices, logprobs=expected)]
        score = self._read(calls[0])
        if score is None:
            strict = self.render_score(view, strict=True)
            calls.append(await self.complete(strict, view, choices=self.choices, logprobs=expected))
            score = self._read(calls[-1])
        value = Score(score=score, raw=[c.raw for c in calls], retried=len(calls) > 1, prompt_hash=prompt_hash,
                      mode=self.score_mode, distribution=calls[-1].distribution,
                      option_share=calls[-1].option_share)  # fmt: skip
        return RoleOutput(text=calls[-1].raw.strip(), value=value, calls=calls)


PROFILE_SYSTEM_PROMPT = """You check how well a chat assistant has worked out who it is talking to.

The person (the assistant was never told this):
Profile: {profile}
Personality: {personality}

Read the conversation and the assistant's latest reply. Rate from 1 to 5 how much of this person the reply
shows the assistant has correctly inferred from what they said: 1 = nothing, or wrong guesses; 5 = it
reflects most of their situation, interests and way of talking. Wrong assumptions lower the score.
Output only the integer."""

PROFILE_USER_PROMPT = """The conversation so far:
{conversation}

The assistant's latest reply:
{reply}

Score (1-5):"""


@register_role("profile_inference")
class ProfileInferenceScorer(AlignmentScorer):
    """RLPA's profile reward: how much of the true persona the reply's implied understanding covers, judged
    per turn from the whole conversation (the alignment scorer sees only the last user message). Scores as
    the alignment scorer does (text or expected, retry once)."""

    system_prompt = PROFILE_SYSTEM_PROMPT

    def render_score(self, view: RoleView, strict: bool = False) -> list[Message]:
        """The prompt: the conversation so far and the reply in ``view.candidates[0]``."""
        conversation = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in view.transcript)
        prompt = PROFILE_USER_PROMPT.format(conversation=conversation, reply=view.candidates[0])
        if strict:
            prompt += SCORER_STRICT_SUFFIX
        return [{"role": "system", "content": self.system(view)}, {"role": "user", "content": prompt}]


ORACLE_SYSTEM_PROMPT = """You are chatting with this person:
Profile: {profile}
Personality: {personality}
Tailor what you say and how you say it to them. Reply briefly and naturally."""


@register_role("model_under_test")
class ModelUnderTest(PromptRole):
    """The evaluated model: sees only the conversation, plus an optional system prompt.

    ``oracle=True`` is the persona-oracle baseline: the same model told the true persona.
    """

    answers: ClassVar[frozenset[Answer]] = frozenset({"text"})

    system_prompt = ""

    def __init__(self, name: str, client: Any, *, oracle: bool = False, **kwargs: Any) -> None:
        super().__init__(name, client, **kwargs)
        self.oracle = oracle
        if oracle and not self.template:
            self.template = ORACLE_SYSTEM_PROMPT

    def render(self, view: RoleView) -> list[Message]:
        """The conversation, after the system prompt if there is one."""
        system = self.system(view) if self.template else ""
        return [*([{"role": "system", "content": system}] if system else []), *view.transcript]
