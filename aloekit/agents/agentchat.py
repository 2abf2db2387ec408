"""Let any autogen-agentchat agent act as a role (tools, custom logic, teams' members...)."""

from __future__ import annotations

import time
from collections.abc import Callable

from autogen_agentchat.base import ChatAgent
from autogen_agentchat.messages import TextMessage
from autogen_core import CancellationToken

from aloekit.agents.base import CallRecord, Message, RoleOutput, RoleView


def default_agent_messages(view: RoleView) -> list[Message]:
    """What the agent is handed: the transcript so far (a responder's view)."""
    return list(view.transcript)


class AgentChatRole:
    """Adapter: a fresh agent from ``agent_factory`` gets the full history on every call.

    A new agent per call keeps the role stateless (any tree node can be regenerated from its path) and
    lets many conversations run at once.

    Example:
        >>> from autogen_agentchat.agents import AssistantAgent
        >>> role = AgentChatRole("plain", lambda: AssistantAgent("friend", model_client=client))  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        agent_factory: Callable[[], ChatAgent],
        *,
        render: Callable[[RoleView], list[Message]] = default_agent_messages,
        backend: str = "agentchat",
    ) -> None:
        self.name = name
        self.agent_factory = agent_factory
        self.render = render
        self.backend = backend

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Hand the agent the history as messages and return its final message."""
        messages = self.render(view)
        chat = [TextMessage(content=m["content"], source=m["role"]) for m in messages]
        started = time.monotonic()
        response = await self.agent_factory().on_messages(chat, CancellationToken())
        text = response.chat_message.to_text() if response.chat_message is not None else ""
        usage = getattr(response.chat_message, "models_usage", None)
        call = CallRecord(
            backend=self.backend,
            messages=messages,
            raw=text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=round(time.monotonic() - started, 4),
        )
        return RoleOutput(text=text.strip(), calls=[call])
