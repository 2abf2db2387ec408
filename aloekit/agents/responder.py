"""Candidate responders: the same reply task, with or without the inducer's hint."""

from __future__ import annotations

from typing import Any, ClassVar

from autogen_core.models import ChatCompletionClient

from aloekit.agents.base import Answer, Message, PromptRole, RoleView, register_role

RESPONDER_SYSTEM_PROMPT = """You are chatting with someone as a warm, attentive friend.
Reply briefly and naturally, in one to three sentences, the way a person would in a chat."""

HINT_PROMPT = """

What this person has revealed about themselves so far:
{hint}
Tailor both what you say and how you say it to this person."""


@register_role("responder")
class Responder(PromptRole):
    """Replies to the conversation; with ``use_hint`` it also sees the inducer's report (never the persona)."""

    answers: ClassVar[frozenset[Answer]] = frozenset({"text"})

    system_prompt = RESPONDER_SYSTEM_PROMPT

    def __init__(self, name: str, client: ChatCompletionClient, *, use_hint: bool = False, **kwargs: Any) -> None:
        super().__init__(name, client, **kwargs)
        self.use_hint = use_hint

    def render(self, view: RoleView) -> list[Message]:
        """System prompt (plus the hint if this responder uses one), then the conversation."""
        system = self.system(view)
        if self.use_hint and view.hint:
            system += HINT_PROMPT.format(hint=view.hint)
        return [{"role": "system", "content": system}, *view.transcript]
