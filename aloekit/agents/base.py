"""What a role is: a stateless async callable over an immutable view of the conversation so far.

A role built from a prompt is a :class:`PromptRole`: a prompt template, a backend and a parser.
Roles are registered by name, so a config (or ``--role``) can name a role written by a user.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel

from aloekit.agents.backends.messages import from_dicts
from aloekit.agents.parsing import option_distribution
from aloekit.errors import AloeError
from aloekit.personas.models import PersonaPair
from aloekit.seeds import draw_seed

Message = dict[str, str]
TOP_LOGPROBS = 20
"""Alternatives asked for with a constrained answer (the OpenAI API's and vLLM's default maximum)."""


@dataclass(frozen=True)
class RoleView:
    """Everything a role may see for one call; nothing else is remembered between calls.

    ``history`` is the continued path before this turn (user/assistant messages, alternating).
    ``persona`` is None for roles that must not see it (the responders). Random draws derive from
    ``(seed, conversation_index, turn)``, never from the id (which holds the run's timestamp).
    """

    conversation_id: str
    turn: int
    history: tuple[Message, ...] = ()
    persona: PersonaPair | None = None
    user_message: str | None = None
    hint: str | None = None
    candidates: tuple[str, ...] = ()
    seed: int = 0
    conversation_index: int = 0
    hinted: tuple[bool, ...] = ()
    """For a judge: which candidates were written with the inducer's hint (parallel to ``candidates``)."""

    def draw_seed(self, purpose: str) -> int:
        """The seed of one random draw of this turn (see :func:`draw_seed`)."""
        return draw_seed(self.seed, self.conversation_index, self.turn, purpose)

    @property
    def transcript(self) -> tuple[Message, ...]:
        """The history plus this turn's user message, if any."""
        if self.user_message is None:
            return self.history
        return (*self.history, {"role": "user", "content": self.user_message})


class CallRecord(BaseModel):
    """One model call made by a role: what was sent, what came back, what it cost."""

    backend: str
    messages: list[Message]
    raw: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    distribution: dict[str, float] | None = None
    """For a constrained answer: P(option) from the first token's logprobs, renormalised over the options."""


@dataclass
class RoleOutput:
    """A role's answer: cleaned ``text``, a parsed ``value`` (hint, verdict...), and its model calls."""

    text: str
    value: Any = None
    calls: list[CallRecord] = field(default_factory=list)


class Role(Protocol):
    """Any async callable from a :class:`RoleView` to a :class:`RoleOutput`."""

    name: str

    async def __call__(self, view: RoleView) -> RoleOutput: ...


class PromptRole:
    """A role made of a prompt template, a backend client and an output parser.

    Subclasses set ``system_prompt`` (a ``str.format`` template over :meth:`fields`) and override
    :meth:`render` and/or :meth:`parse`. Every template can be replaced from config
    (``options: {system_prompt: ...}``) without code.

    Example, a complete custom inducer that names only the user's hobbies:

        >>> from aloekit.agents import PromptRole, RoleOutput, register_role
        >>> @register_role("hobby_inducer")
        ... class HobbyInducer(PromptRole):
        ...     system_prompt = "List the hobbies the user has mentioned so far, comma-separated, or 'None'."
        ...     def render(self, view):
        ...         said = "\\n".join(m["content"] for m in view.transcript if m["role"] == "user")
        ...         return [{"role": "system", "content": self.system()}, {"role": "user", "content": said}]
        ...     def parse(self, text, view):
        ...         return None if text.strip().lower().startswith("none") else f"Hobbies: {text.strip()}"

    and in the simulation config: ``inducer: {kind: hobby_inducer, backend: "local:smollm2"}``.
    """

    system_prompt: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        client: ChatCompletionClient,
        *,
        backend: str = "",
        generation: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        **options: Any,
    ) -> None:
        self.name = name
        self.client = client
        self.backend = backend
        self.generation = dict(generation or {})
        self.template = system_prompt if system_prompt is not None else type(self).system_prompt
        self.options = options

    def fields(self, view: RoleView) -> dict[str, str]:
        """Values available to the template: persona parts, hint."""
        out = {"hint": view.hint or "None"}
        if view.persona is not None:
            out |= {"profile": view.persona.profile.text, "personality": view.persona.personality.text}
        return out

    def system(self, view: RoleView | None = None) -> str:
        """The system prompt filled in for ``view``."""
        return self.template.format(**(self.fields(view) if view is not None else {}))

    def render(self, view: RoleView) -> list[Message]:
        """The chat messages to send (default: the system prompt, then the transcript)."""
        return [{"role": "system", "content": self.system(view)}, *view.transcript]

    def parse(self, text: str, view: RoleView) -> Any:
        """The parsed value of a reply (default: none beyond the text)."""
        return None

    def clean(self, text: str) -> str:
        """Tidy the raw reply before it is used or parsed."""
        return text.strip()

    async def complete(
        self,
        messages: list[Message],
        view: RoleView | None = None,
        *,
        choices: Sequence[str] | None = None,
        logprobs: bool = False,
        **overrides: Any,
    ) -> CallRecord:
        """Call the backend once and record the call.

        Given the ``view``, a sampled call without a configured seed gets one derived from (seed,
        conversation index, turn, role), so a rerun with the same seed draws the same samples.
        ``choices`` constrains the answer to one of them (``guided_choice``); with ``logprobs`` the first
        token's distribution over them is asked for too and recorded as the call's ``distribution``
        (such calls are never served from the cache, which keeps no logprobs).
        """
        options = {**self.generation, **overrides}
        if view is not None and options.get("seed") is None and options.get("temperature") != 0:
            options["seed"] = view.draw_seed(f"sample:{self.name}")
        if choices:
            options["guided_choice"] = list(choices)
        if choices and logprobs:
            options |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        started = time.monotonic()
        result = await self.client.create(from_dicts(messages), extra_create_args=options)
        raw = result.content if isinstance(result.content, str) else str(result.content)
        return CallRecord(
            backend=self.backend,
            messages=messages,
            raw=raw,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            latency_s=round(time.monotonic() - started, 4),
            cached=result.cached,
            distribution=option_distribution(result.logprobs, choices) if choices and logprobs else None,
        )

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Render, call, clean, parse."""
        call = await self.complete(self.render(view), view)
        text = self.clean(call.raw)
        return RoleOutput(text=text, value=self.parse(text, view), calls=[call])


RoleFactory = Callable[..., Role]
_ROLES: dict[str, RoleFactory] = {}


def register_role(name: str) -> Callable[[RoleFactory], RoleFactory]:
    """Register a role class or factory under ``name``; it is built as ``factory(name, client, **options)``."""

    def decorate(factory: RoleFactory) -> RoleFactory:
        _ROLES[name] = factory
        return factory

    return decorate


def get_role_factory(kind: str) -> RoleFactory:
    """The factory registered under ``kind``."""
    _ensure_builtins()
    try:
        return _ROLES[kind]
    except KeyError:
        raise AloeError(f"unknown role kind {kind!r} (registered: {', '.join(sorted(_ROLES))})") from None


def list_roles() -> list[str]:
    """Names of every registered role kind."""
    _ensure_builtins()
    return sorted(_ROLES)


def _ensure_builtins() -> None:
    from aloekit.agents import inducer, judge, responder, scorer, user  # noqa: F401
