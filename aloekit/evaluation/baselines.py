"""Evaluation baselines: how the model under test is run, besides as is.

A baseline names the role kind and options the model under test is built with, and whether it is shown
the true persona. ``blind`` and ``oracle`` bound the metric; ``reminder``, ``cot`` and ``self-critique``
are prompting baselines (the same model, prompted to infer and adapt to the user), the methods a trained
model should beat. Add one with :func:`register_baseline`, from a plugin module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aloekit.agents.base import Message, RoleOutput, RoleView, register_role
from aloekit.agents.scorer import ModelUnderTest
from aloekit.errors import ConfigError


@dataclass(frozen=True)
class Baseline:
    """How ``aloe eval --baseline NAME`` builds the model under test."""

    name: str
    description: str
    kind: str = "model_under_test"
    """Role kind of the model under test."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Options of that role (a system prompt, ``oracle``...)."""
    sees_persona: bool = False
    """Whether the model is shown the true persona (only the oracle is)."""


_BASELINES: dict[str, Baseline] = {}


def register_baseline(baseline: Baseline) -> Baseline:
    """Make ``baseline`` available to ``aloe eval --baseline`` (a later registration of a name replaces it)."""
    _BASELINES[baseline.name] = baseline
    return baseline


def get_baseline(name: str) -> Baseline:
    """The registered baseline ``name``; a one-line error listing the known ones otherwise."""
    try:
        return _BASELINES[name]
    except KeyError:
        raise ConfigError(f"unknown baseline {name!r} (known: {', '.join(list_baselines())})") from None


def list_baselines() -> list[str]:
    """Names of every registered baseline, in registration order."""
    return list(_BASELINES)


REMINDER_PROMPT = """You are chatting with one particular person whose preferences you are not told.
As the conversation goes on, notice what they reveal about themselves (their life, interests and
circumstances, and how they like to be talked to) and adapt both what you say and how you say it to
them. Do not ask them to list their preferences. Reply briefly and naturally."""

COT_NOTES_PROMPT = """Read the conversation below and think about the person you are talking to:
what they have revealed about their life, interests and personality so far, and how your next reply
should adapt to them in content and style. Write short notes only, not the reply."""

COT_REPLY_PROMPT = """You are chatting with one particular person. Your private notes about them:
{notes}
Use the notes to tailor what you say and how you say it. Reply briefly and naturally, and do not
mention the notes."""

CRITIQUE_PROMPT = """Below is a conversation and a draft of the assistant's next reply. Say briefly what the
person seems to prefer (from what they revealed so far) and how the draft fails to fit them in content
or style. Write the critique only."""

REWRITE_PROMPT = """You are chatting with one particular person. You wrote this draft reply:
{draft}
A critique of how well it fits the person:
{critique}
Write the improved reply only: brief, natural and tailored to them."""


def _transcript(view: RoleView) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in view.transcript)


@register_role("cot_model")
class ChainOfThoughtModel(ModelUnderTest):
    """Reasons about the user first (one call: notes), then replies with the notes in its system prompt."""

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Notes, then the reply; both calls are recorded."""
        notes = await self.complete(self._ask(COT_NOTES_PROMPT, view), view)
        system = COT_REPLY_PROMPT.format(notes=notes.raw.strip() or "none yet")
        reply = await self.complete([{"role": "system", "content": system}, *view.transcript], view)
        return RoleOutput(text=self.clean(reply.raw), calls=[notes, reply])

    @staticmethod
    def _ask(instruction: str, view: RoleView, extra: str = "") -> list[Message]:
        return [{"role": "system", "content": instruction},
                {"role": "user", "content": f"Conversation:\n{_transcript(view)}{extra}"}]  # fmt: skip


@register_role("self_critique_model")
class SelfCritiqueModel(ChainOfThoughtModel):
    """Drafts a reply, critiques it against what the user has revealed, and rewrites it (three calls)."""

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Draft, critique, rewrite; every call is recorded."""
        draft = await self.complete(list(view.transcript), view)
        critique = await self.complete(self._ask(CRITIQUE_PROMPT, view, f"\n\nDraft reply:\n{draft.raw.strip()}"), view)
        system = REWRITE_PROMPT.format(draft=draft.raw.strip(), critique=critique.raw.strip() or "none")
        final = await self.complete([{"role": "system", "content": system}, *view.transcript], view)
        return RoleOutput(text=self.clean(final.raw), calls=[draft, critique, final])


register_baseline(Baseline("blind", "the model as is: it sees only the conversation"))
register_baseline(Baseline("oracle", "the same model told the true persona (an upper bound)", options={"oracle": True},
                           sees_persona=True))  # fmt: skip
register_baseline(Baseline("reminder", "told to infer the user's preferences and adapt to them",
                           options={"system_prompt": REMINDER_PROMPT}))  # fmt: skip
register_baseline(Baseline("cot", "writes notes about the user first, then replies with them", kind="cot_model"))
register_baseline(Baseline("self-critique", "drafts, critiques the draft against the user, rewrites",
                           kind="self_critique_model"))  # fmt: skip
