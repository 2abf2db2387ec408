"""The user simulator: writes the next message of a persona chatting with a friend."""

from __future__ import annotations

import re
from typing import ClassVar

from aloekit.agents.base import Answer, Message, PromptRole, RoleView, register_role

USER_SYSTEM_PROMPT = """You are playing a real person in an online chat with a friend. Stay in character the whole time.

Who you are:
Profile: {profile}
Personality: {personality}

How to write:
- Write only your own next message: one to three short, casual sentences, like a text message.
- Talk about things from your own life (your profile) and let your personality show in how you write.
- Reveal only a little about yourself in each message. Never list your facts or traits.
- You are chatting with a friend, not asking an assistant for help or advice.
- No stage directions, no quotation marks around your message, no name labels."""

OPENING_PROMPT = "Write your first message to start the chat."

_STAGE_DIRECTION = re.compile(r"\*[^*]*\*")
_LABEL = re.compile(r"^\s*(?:me|user|you|friend|[A-Z][a-z]+)\s*:\s*")


@register_role("user_simulator")
class UserSimulator(PromptRole):
    """Sees the true persona and its own side of the chat; the assistant's replies arrive as the other party."""

    answers: ClassVar[frozenset[Answer]] = frozenset({"text"})

    system_prompt = USER_SYSTEM_PROMPT

    def render(self, view: RoleView) -> list[Message]:
        """Flip roles: to the simulator, its own messages are 'assistant' and the replies are 'user'.

        The request to open the chat stays first, so the list alternates from a user message at every
        turn, as strict chat templates (Mistral-Instruct's) require.
        """
        flipped = [
            {"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in view.history
        ]
        return [{"role": "system", "content": self.system(view)}, {"role": "user", "content": OPENING_PROMPT}, *flipped]

    def clean(self, text: str) -> str:
        """Drop *stage directions*, a leading name label and wrapping quotes."""
        text = _STAGE_DIRECTION.sub("", text)
        text = _LABEL.sub("", text.strip(), count=1)
        text = " ".join(text.split())
        return text.strip("\"' ") or text
