"""The inducer: reports, conservatively, what the user has revealed about themselves so far."""

from __future__ import annotations

from typing import ClassVar

from aloekit.agents.base import Answer, Message, PromptRole, RoleView, register_role

INDUCER_SYSTEM_PROMPT = """You read a chat and work out what the user has revealed about themselves so far.
You are shown the user's true persona only so that you can be accurate: report only what the user's own
messages so far state or clearly imply, and nothing you merely know from the persona. Be conservative.

The user's true persona:
Profile: {profile}
Personality: {personality}

Answer in exactly this form, leaving out a line if nothing is revealed for it:
Profile: <facts revealed so far>
Personalities: <traits shown so far>
If nothing at all has been revealed, answer: None"""


@register_role("inducer")
class Inducer(PromptRole):
    """Sees the transcript and the true persona; its output is the hint the preferred responder gets."""

    answers: ClassVar[frozenset[Answer]] = frozenset({"text"})

    system_prompt = INDUCER_SYSTEM_PROMPT

    def render(self, view: RoleView) -> list[Message]:
        """The transcript as one block of text, so the model analyses it instead of continuing it."""
        lines = [f"{'User' if m['role'] == 'user' else 'Friend'}: {m['content']}" for m in view.transcript]
        return [
            {"role": "system", "content": self.system(view)},
            {"role": "user", "content": "The chat so far:\n" + "\n".join(lines)},
        ]

    def parse(self, text: str, view: RoleView) -> str | None:
        """None when the inducer found nothing; otherwise the report itself."""
        stripped = text.strip().strip(".")
        return None if not stripped or stripped.lower() == "none" else text.strip()
