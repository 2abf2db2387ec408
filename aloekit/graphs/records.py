"""What one simulated turn produced, as saved in the store and turned into tree nodes."""

from __future__ import annotations

from pydantic import BaseModel

from aloekit.agents.base import CallRecord
from aloekit.agents.judge import INVALID, Verdict


class CandidateRecord(BaseModel):
    """One candidate reply of a turn."""

    index: int
    responder: str
    backend: str
    used_hint: bool
    text: str
    calls: list[CallRecord]
    reward: float | None = None
    """An RL rollout's judge score of this candidate (``aloe train grpo``); None in simulations."""


class TurnRecord(BaseModel):
    """Everything one turn produced: the user message, the inducer's report, the candidates, the verdict,
    and which candidate the conversation continued with."""

    conversation_id: str
    turn: int
    user_message: str
    user_calls: list[CallRecord]
    hint: str | None
    inducer_text: str
    inducer_calls: list[CallRecord]
    candidates: list[CandidateRecord]
    verdict: Verdict
    judge_calls: list[CallRecord]
    continued: int

    @property
    def labelled(self) -> bool:
        """Whether the judge gave a valid verdict (unlabelled turns are left out of training data)."""
        return self.verdict.preferred != INVALID

    def label(self, index: int) -> str | None:
        """``preferred`` or ``rejected`` for a candidate, or None when the verdict is invalid."""
        if not self.labelled:
            return None
        return "preferred" if index == self.verdict.preferred else "rejected"

    @property
    def calls(self) -> list[CallRecord]:
        """Every model call made during the turn."""
        return [*self.user_calls, *self.inducer_calls, *(c for cand in self.candidates for c in cand.calls),
                *self.judge_calls]  # fmt: skip
