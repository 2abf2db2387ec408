"""Prompting roles for the model under test: it reasons about the user (``cot_model``), or drafts, critiques
and rewrites (``self_critique_model``). The prompting baselines of ``aloe eval --baseline`` use them."""

from __future__ import annotations

from aloekit.agents.base import Message, RoleOutput, RoleView, register_role
from aloekit.agents.scorer import ModelUnderTest

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
