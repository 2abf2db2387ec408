"""Let any autogen-agentchat agent act as a role (tools, custom logic, teams' members...).

One call registers an agent factory as a role kind, so a config names it like any built-in role:

    >>> from autogen_agentchat.agents import AssistantAgent
    >>> friend = lambda client: AssistantAgent("friend", model_client=client)  # doctest: +SKIP
    >>> register_agent_role("tool_friend", friend)  # doctest: +SKIP

and in ``aloe.toml``: ``kind = "tool_friend"`` with any ``backend`` and ``generation`` table.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

from autogen_agentchat.base import ChatAgent
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
    SystemMessage,
)
from autogen_core.tools import Tool, ToolSchema

from aloekit.agents.backends.messages import from_dicts, to_dicts
from aloekit.agents.base import (
    CallRecord,
    Message,
    PromptRole,
    RoleFactory,
    RoleOutput,
    RoleView,
    check_template,
    format_template,
    register_role,
)
from aloekit.agents.responder import HINT_PROMPT, Responder
from aloekit.agents.user import UserSimulator
from aloekit.errors import AloeError, ConfigError

AgentFactory = Callable[..., ChatAgent]
"""Builds a fresh agent: ``factory(client)`` on the role's model client, or ``factory()`` for an agent that
brings its own client (then the role's generation options and the hint cannot reach its model)."""

PERSONA_PROMPT = """

Who you are:
Profile: {profile}
Personality: {personality}"""
"""Appended to the system message of an agent that writes the user's turns, as the user simulator's prompt says it."""


def writes_user_turn(view: RoleView) -> bool:
    """Whether the role writes the user's next message (its view has no user message of this turn)."""
    # The graph gives only the user simulator such a view; responders, inducer and judge answer the user.
    return view.user_message is None


@functools.cache
def _renderers() -> dict[bool, PromptRole]:
    # The built-in roles' own render() decides who said what, so an agent sees the conversation exactly as the
    # user simulator or a responder would. Only render() is used: the client is never called.
    from autogen_ext.models.replay import ReplayChatCompletionClient

    client = ReplayChatCompletionClient([])
    return {
        True: UserSimulator("agent", client, system_prompt=""),
        False: Responder("agent", client, system_prompt=""),
    }


def default_agent_messages(view: RoleView) -> list[Message]:
    """The conversation from the agent's side: its own earlier messages as ``assistant``, the other side's as ``user``.

    A role writing the user's turn gets the user simulator's view (roles flipped, an opening prompt on the
    first turn); any other role gets a responder's (the transcript). The system message is the agent's own.
    """
    renderer = _renderers()[writes_user_turn(view)]
    return [m for m in renderer.render(view) if m["role"] != "system"]


def _calls_json(calls: Sequence[FunctionCall]) -> str:
    """Function calls as JSON (``FunctionCall`` is a dataclass, not a pydantic model)."""
    return json.dumps([dataclasses.asdict(call) for call in calls])


def _message_dicts(messages: Sequence[LLMMessage]) -> list[Message]:
    """Messages as recorded in a :class:`CallRecord`; an assistant's tool calls are kept as JSON."""
    out: list[Message] = []
    for message in messages:
        if isinstance(message, AssistantMessage) and not isinstance(message.content, str):
            # to_dicts reads list content as multimodal parts; an assistant's list is its function calls.
            out.append({"role": "assistant", "content": _calls_json(message.content)})
        else:
            out.extend(to_dicts([message]))
    return out


class AgentClient(ChatCompletionClient):
    """The model client an agent gets for one role call: the role's client with the role's generation options
    under every request's own ``extra_create_args``, ``system_suffix`` (the hint...) appended to the system
    message, and every call recorded in :attr:`calls`."""

    component_type = "model"

    def __init__(
        self,
        inner: ChatCompletionClient,
        *,
        options: Mapping[str, Any] | None = None,
        system_suffix: str = "",
        backend: str = "",
    ) -> None:
        self.inner = inner
        self.options = dict(options or {})
        self.system_suffix = system_suffix
        self.backend = backend
        self.calls: list[CallRecord] = []

    def with_suffix(self, messages: Sequence[LLMMessage]) -> list[LLMMessage]:
        """``messages`` with :attr:`system_suffix` added to the first system message (or as one, if none)."""
        out = list(messages)
        if not self.system_suffix:
            return out
        for i, message in enumerate(out):
            if isinstance(message, SystemMessage):
                out[i] = SystemMessage(content=message.content + self.system_suffix)
                return out
        return [SystemMessage(content=self.system_suffix.lstrip()), *out]

    def _record(self, messages: Sequence[LLMMessage], result: CreateResult, started: float) -> None:
        raw = result.content if isinstance(result.content, str) else _calls_json(result.content)
        self.calls.append(
            CallRecord(
                backend=self.backend,
                messages=_message_dicts(messages),
                raw=raw,
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                latency_s=round(time.monotonic() - started, 4),
                cached=result.cached,
            )
        )

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | str = "auto",
        json_output: bool | type | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """Call the role's client with its options and the system suffix, and record the call."""
        sent, started = self.with_suffix(messages), time.monotonic()
        result = await self.inner.create(
            sent,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args={**self.options, **extra_create_args},
            cancellation_token=cancellation_token,
        )
        self._record(sent, result, started)
        return result

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | str = "auto",
        json_output: bool | type | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Stream from the role's client with its options and the system suffix; the final result is recorded."""
        sent, started = self.with_suffix(messages), time.monotonic()
        async for chunk in self.inner.create_stream(
            sent,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args={**self.options, **extra_create_args},
            cancellation_token=cancellation_token,
        ):
            if isinstance(chunk, CreateResult):
                self._record(sent, chunk, started)
            yield chunk

    async def close(self) -> None:
        """Nothing to release: the role's client outlives the agent (the backend pool closes it)."""

    def actual_usage(self) -> RequestUsage:
        """Delegate to the role's client."""
        return self.inner.actual_usage()

    def total_usage(self) -> RequestUsage:
        """Delegate to the role's client."""
        return self.inner.total_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        """Delegate to the role's client."""
        return self.inner.count_tokens(self.with_suffix(messages), tools=tools)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        """Delegate to the role's client."""
        return self.inner.remaining_tokens(self.with_suffix(messages), tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        """Deprecated autogen property; delegates."""
        return self.inner.capabilities

    @property
    def model_info(self) -> ModelInfo:
        """Delegate to the role's client (an agent checks it, e.g. for function calling before taking tools)."""
        return self.inner.model_info


class AgentChatRole:
    """Adapter: a fresh agent from ``agent_factory`` gets the conversation on every call.

    The agent sees the conversation from its side (see :func:`default_agent_messages`): an agent with a
    ``model_context`` (``AssistantAgent``) gets the earlier messages there as user/assistant messages and this
    turn's message as its task; another agent gets them all as ``TextMessage``\\ s (``source`` its own name for
    its side's). Given the role's ``client``, the factory is called as ``agent_factory(client)`` with an
    :class:`AgentClient` over it, so every model call the agent makes carries the role's ``generation``
    options, the inducer's hint (``hint_prompt`` over ``{hint}``, appended to the system message) and, for
    an agent writing the user's turns, the persona, and is recorded in the role's output. Without a
    ``client`` the agent brings its own and ``agent_factory()`` is called: only the conversation reaches it.

    A new agent per call keeps the role stateless (any tree node can be regenerated from its path) and lets
    many conversations run at once. Register a factory as a role kind with :func:`register_agent_role`.
    """

    def __init__(
        self,
        name: str,
        agent_factory: AgentFactory,
        *,
        client: ChatCompletionClient | None = None,
        backend: str = "agentchat",
        generation: Mapping[str, Any] | None = None,
        hint_prompt: str = HINT_PROMPT,
        render: Callable[[RoleView], list[Message]] = default_agent_messages,
    ) -> None:
        self.name = name
        self.agent_factory = agent_factory
        self.client = client
        self.backend = backend
        self.generation = dict(generation or {})
        self.hint_prompt = hint_prompt
        self.render = render
        if client is not None:
            _check_takes_client(name, agent_factory, client)

    def check_templates(self, *, sees_persona: bool = True) -> None:
        """Raise a one-line :class:`ConfigError` for a malformed ``hint_prompt`` (it may use ``{hint}``)."""
        check_template(self.hint_prompt, {"hint"}, f"role {self.name!r}: option 'hint_prompt'")

    def create_args(self, view: RoleView) -> dict[str, Any]:
        """The role's generation options for this view's calls (a seed derived as :class:`PromptRole` does)."""
        options = dict(self.generation)
        if options.get("seed") is None and options.get("temperature") != 0:
            options["seed"] = view.draw_seed(f"sample:{self.name}")  # a rerun with the same seed samples alike
        return options

    def system_suffix(self, view: RoleView) -> str:
        """What is appended to the agent's system message: the hint, and the persona for the user's side."""
        suffix, where = "", f"role {self.name!r}: option 'hint_prompt'"
        if view.hint:
            suffix += format_template(self.hint_prompt, {"hint": view.hint}, where)
        if writes_user_turn(view) and view.persona is not None:
            suffix += PERSONA_PROMPT.format(**_renderers()[True].fields(view))
        return suffix

    def _agent(self, client: AgentClient | None) -> ChatAgent:
        try:
            return self.agent_factory(client) if client is not None else self.agent_factory()
        except AloeError:
            raise
        except Exception as exc:  # one line naming the role, so the run marks the conversation failed and goes on
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            tip = ""
            if client is not None and client.model_info.get("function_calling") is False:
                tip = f" (backend {self.backend!r} reports a model without function calling, which tools need)"
            raise ConfigError(f"role {self.name!r}: the agent factory failed: {type(exc).__name__}"
                              + (f": {detail}" if detail else "") + tip) from exc  # fmt: skip

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Hand a fresh agent the conversation and return its final message, with every model call it made."""
        messages = self.render(view)
        client = None
        if self.client is not None:
            options, suffix = self.create_args(view), self.system_suffix(view)
            client = AgentClient(self.client, options=options, system_suffix=suffix, backend=self.backend)
        agent = self._agent(client)
        started = time.monotonic()
        response = await agent.on_messages(await _hand_over(agent, messages), CancellationToken())
        text = response.chat_message.to_text() if response.chat_message is not None else ""
        if client is not None:
            return RoleOutput(text=text.strip(), calls=client.calls)
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


async def _hand_over(agent: ChatAgent, messages: list[Message]) -> list[BaseChatMessage]:
    """Give ``agent`` the conversation: earlier messages into its model context (roles kept), and return
    the new messages to pass to ``on_messages`` (this turn's user message)."""
    context = getattr(agent, "model_context", None)
    if not isinstance(context, ChatCompletionContext):
        # No context to fill: a TextMessage is all such an agent reads; its source tells whose it was.
        return [TextMessage(content=m["content"], source=agent.name if m["role"] == "assistant" else "user")
                for m in messages]  # fmt: skip
    # A TextMessage always becomes a UserMessage in the context, so earlier assistant turns go in directly.
    new = messages[-1:] if messages and messages[-1]["role"] == "user" else []
    for message in from_dicts(messages[: len(messages) - len(new)]):
        if isinstance(message, AssistantMessage):
            message = AssistantMessage(content=message.content, source=agent.name)
        await context.add_message(message)
    return [TextMessage(content=m["content"], source="user") for m in new]


def _check_takes_client(name: str, agent_factory: AgentFactory, client: ChatCompletionClient) -> None:
    """Fail when the role is built, not mid-run, if the factory cannot be called with the model client."""
    try:
        signature = inspect.signature(agent_factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read, so it is trusted
        return
    try:
        signature.bind(client)
    except TypeError:
        raise ConfigError(
            f"role {name!r}: the agent factory must take the role's model client as its one argument, "
            f"e.g. lambda client: AssistantAgent('friend', model_client=client)"
        ) from None


def register_agent_role(kind: str, agent_factory: Callable[[ChatCompletionClient], ChatAgent]) -> RoleFactory:
    """Register ``agent_factory`` as role kind ``kind``: each call builds a fresh agent on the role's client.

    The factory receives an :class:`AgentClient` over the role's backend, so the agent talks to the
    configured ``backend`` with the role's ``generation`` options and sees the hint; a config may set the
    option ``hint_prompt``. Returns the registered role factory.
    """

    def build(
        name: str,
        client: ChatCompletionClient,
        *,
        backend: str = "",
        generation: Mapping[str, Any] | None = None,
        hint_prompt: str = HINT_PROMPT,
    ) -> AgentChatRole:
        return AgentChatRole(
            name, agent_factory, client=client, backend=backend, generation=generation, hint_prompt=hint_prompt
        )

    build.__doc__ = f"The agent role {kind!r}, built from {getattr(agent_factory, '__qualname__', agent_factory)!r}."
    return register_role(kind)(build)
