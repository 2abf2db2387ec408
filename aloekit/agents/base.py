"""What a role is: a stateless async callable over an immutable view of the conversation so far.

A role built from a prompt is a :class:`PromptRole`: a prompt template, a backend and a parser.
Roles are registered by name, so a config (or ``--role``) can name a role written by a user.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import string
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from aloekit.agents.backends.messages import alternation_error, conform, from_dicts
from aloekit.agents.parsing import option_probabilities, renormalised
from aloekit.config import GenerationOptions
from aloekit.errors import AloeError, ConfigError
from aloekit.personas.models import Persona, PersonaPair
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
    option_share: float | None = None
    """For a constrained answer: the options' share of the first token's probability before renormalising
    (1 where the backend gave the options alone; small where the model wanted to say something else)."""


@dataclass
class RoleOutput:
    """A role's answer: cleaned ``text``, a parsed ``value`` (hint, verdict...), and its model calls."""

    text: str
    value: Any = None
    calls: list[CallRecord] = field(default_factory=list)


Answer = Literal["text", "verdict", "score"]
"""What a role's place in a graph needs from it: text (user, inducer, responders, the model under test), a
:class:`~aloekit.agents.judge.Verdict` (the simulation's judge) or a :class:`~aloekit.agents.scorer.Score`
(the eval scorer, GRPO's judge). A role class may say which it gives in ``answers`` (a frozenset of them), so
a kind put in the wrong place is refused before any call."""


class Role(Protocol):
    """Any async callable from a :class:`RoleView` to a :class:`RoleOutput`."""

    name: str

    async def __call__(self, view: RoleView) -> RoleOutput: ...


class PromptRole:
    """A role made of a prompt template, a backend client and an output parser.

    Subclasses set ``system_prompt`` (a ``str.format`` template over :meth:`fields`) and override
    :meth:`render` and/or :meth:`parse`. Every template can be replaced from config
    (``options: {system_prompt: ...}``) without code; a subclass with more template options lists them
    in :meth:`template_fields`, so an unknown placeholder fails when the role is built, not mid-run.
    Options are the keyword arguments of ``__init__``: a config option no ``__init__`` takes is an error.

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
    ) -> None:
        self.name = name
        self.client = client
        self.backend = backend
        self.generation = dict(generation or {})
        self.template = system_prompt if system_prompt is not None else type(self).system_prompt

    def fields(self, view: RoleView) -> dict[str, str]:
        """Values available to the template: persona parts, hint."""
        out = {"hint": view.hint or "None"}
        if view.persona is not None:
            out |= {"profile": view.persona.profile.text, "personality": view.persona.personality.text}
        return out

    def template_fields(self, view: RoleView) -> dict[str, tuple[str, frozenset[str]]]:
        """Every template option: its text and the placeholders it can fill for a view like ``view``."""
        return {"system_prompt": (self.template, frozenset(self.fields(view)))}

    def check_templates(self, *, sees_persona: bool = True) -> None:
        """Raise a one-line :class:`ConfigError` for a malformed template or an unknown placeholder.

        ``sees_persona``: whether the graph shows this role the persona (responders never see it).
        """
        hidden = {} if sees_persona else dict.fromkeys(("profile", "personality"), "this role is not shown the persona")
        for option, (text, allowed) in self.template_fields(probe_view(sees_persona)).items():
            check_template(text, allowed, f"role {self.name!r}: option {option!r}", unavailable=hidden)

    def system(self, view: RoleView | None = None) -> str:
        """The system prompt filled in for ``view``."""
        values = self.fields(view) if view is not None else {}
        return format_template(self.template, values, f"role {self.name!r}: option 'system_prompt'")

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
        token's distribution over them is asked for too and recorded as the call's ``distribution`` and
        ``option_share`` (such calls are never served from the cache, which keeps no logprobs).
        """
        messages = conform(messages)
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
        probabilities = option_probabilities(result.logprobs, choices) if choices and logprobs else None
        return CallRecord(
            backend=self.backend,
            messages=messages,
            raw=raw,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            latency_s=round(time.monotonic() - started, 4),
            cached=result.cached,
            distribution=renormalised(probabilities) if probabilities else None,
            option_share=round(sum(probabilities.values()), 6) if probabilities else None,
        )

    async def __call__(self, view: RoleView) -> RoleOutput:
        """Render, call, clean, parse."""
        call = await self.complete(self.render(view), view)
        text = self.clean(call.raw)
        return RoleOutput(text=text, value=self.parse(text, view), calls=[call])


def _placeholders(template: str) -> Iterator[tuple[str, str | None]]:
    """(field name, conversion) of every ``{...}`` in ``template``, nested format specs included."""
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is not None:
            yield name, conversion
        if spec:
            yield from _placeholders(spec)


def _allowed_text(allowed: Iterable[str]) -> str:
    listed = ", ".join(f"{{{name}}}" for name in sorted(allowed)) or "none"
    return f"allowed: {listed}; write {{{{ and }}}} for literal braces"


def check_template(
    template: Any, allowed: Iterable[str], where: str, *, unavailable: Mapping[str, str] | None = None
) -> None:
    """Raise a one-line :class:`ConfigError` starting with ``where`` if ``template`` is not a valid
    ``str.format`` template over the placeholders ``allowed`` (``unavailable``: placeholder -> why not)."""
    allowed, unavailable = frozenset(allowed), unavailable or {}
    if not isinstance(template, str):
        raise ConfigError(f"{where}: a template must be a string, got {type(template).__name__}")
    try:
        found = list(_placeholders(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: malformed template: {exc} ({_allowed_text(allowed)})") from None
    for name, conversion in found:
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)  # the message stays one line
        if name not in allowed and name in unavailable:
            reason = unavailable[name]
            raise ConfigError(f"{where}: placeholder {{{shown}}} cannot be used: {reason} ({_allowed_text(allowed)})")
        if name not in allowed:
            raise ConfigError(f"{where}: unknown placeholder {{{shown}}} ({_allowed_text(allowed)})")
        if conversion not in (None, "r", "s", "a"):
            raise ConfigError(f"{where}: placeholder {{{shown}!{conversion}}} has an unknown conversion (use !r or !s)")
    format_template(template, dict.fromkeys(allowed, ""), where)  # format specs are checked only by formatting


def format_template(template: str, values: Mapping[str, Any], where: str) -> str:
    """``template.format(**values)``, failing with one :class:`ConfigError` line instead of a KeyError."""
    try:
        return template.format(**values)
    except KeyError as exc:
        raise ConfigError(f"{where}: unknown placeholder {{{exc.args[0]}}} ({_allowed_text(values)})") from None
    except IndexError:
        raise ConfigError(f"{where}: positional placeholder {{}} ({_allowed_text(values)})") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: malformed template: {exc} ({_allowed_text(values)})") from None


@functools.cache
def _probe_persona() -> PersonaPair:
    return PersonaPair(profile=Persona.new("profile", "probe"), personality=Persona.new("personality", "probe"))


def probe_view(sees_persona: bool = True, turn: int = 1) -> RoleView:
    """A stand-in view for checks made before any call: it tells which template fields a role can fill,
    and (at ``turn`` > 1, with a history) what its prompts look like later in a conversation."""
    persona = _probe_persona() if sees_persona else None
    history = tuple(
        {"role": role, "content": f"{role} message {t}"} for t in range(1, turn) for role in ("user", "assistant")
    )
    return RoleView(conversation_id="check", turn=turn, history=history, persona=persona, user_message="",
                    hint="", candidates=("", ""), hinted=(True, False))  # fmt: skip


def check_prompts(role: Any, where: str, chat_template: Callable[[list[Message]], Any] | None = None,
                  *, sees_persona: bool = True) -> None:  # fmt: skip
    """Raise a one-line :class:`ConfigError` starting with ``where`` if a :class:`PromptRole`'s prompt at
    turns 1-3 breaks strict user/assistant alternation or, given the backend's ``chat_template`` renderer,
    that template rejects it. Other roles (agents, embedding judges) build their own prompts: not checked."""
    if not isinstance(role, PromptRole):
        return
    for turn in (1, 2, 3):
        messages = conform(role.render(probe_view(sees_persona, turn)))
        if problem := alternation_error(messages):
            raise ConfigError(f"{where}: its prompt at turn {turn} {problem}")
        if chat_template is not None:
            try:
                chat_template(messages)
            except AloeError:
                raise
            except Exception as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"{where}: the backend's chat template rejects its prompt at turn {turn}: "
                                  f"{detail}") from None  # fmt: skip


RoleFactory = Callable[..., Role]
_ROLES: dict[str, RoleFactory] = {}
RESERVED_OPTIONS = {"backend": "the role's backend", "generation": "the role's generation table"}
"""Keyword arguments every role is built with from its own config fields, never from ``options``."""


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
        raise ConfigError(f"unknown role kind {kind!r} (registered: {', '.join(sorted(_ROLES))})") from None


def _factory_parameters(factory: RoleFactory) -> tuple[dict[str, Any], bool]:
    """Keyword parameters a factory takes after ``(name, client)``, with their types where they resolve,
    and whether it also takes ``**kwargs`` that go somewhere not visible here (then anything is accepted).

    A class is read along its MRO: an ``__init__`` with ``**kwargs`` is taken to pass them to the next one.
    """
    if isinstance(factory, type):
        inits = [cls.__init__ for cls in inspect.getmro(factory) if "__init__" in vars(cls) and cls is not object]
        skip = 3  # self, name, client
    else:
        inits, skip = [factory], 2
    params: dict[str, Any] = {}
    for init in inits:
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # a builtin or C factory: nothing to read, so anything goes
            return params, True
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # annotations that do not resolve here only lose the type check
            hints = {}
        positional = 0
        for param in signature.parameters.values():
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                positional += 1
                if positional <= skip:
                    continue
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                params.setdefault(param.name, hints.get(param.name, Any))
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return params, False
    return params, not isinstance(factory, type)  # a class's last **kwargs reach object(), which takes none


def role_options(kind: str) -> frozenset[str] | None:
    """Option names the role ``kind`` accepts (from its factory's signature); None when it accepts any."""
    params, open_ended = _factory_parameters(get_role_factory(kind))
    return None if open_ended else frozenset(params) - set(RESERVED_OPTIONS)


def check_role_options(name: str, kind: str, options: Mapping[str, Any], *, provided: Iterable[str] = ()) -> None:
    """Raise a one-line :class:`ConfigError` for an option of role ``name`` that its kind does not take, that
    aloekit sets itself (``backend``, ``generation``, ``provided``), or whose value has the wrong type."""
    params, open_ended = _factory_parameters(get_role_factory(kind))
    provided = set(provided)
    accepted = sorted(set(params) - set(RESERVED_OPTIONS) - provided)
    where = f"role {name!r} ({kind})"
    for key, value in options.items():
        if key in RESERVED_OPTIONS:
            raise ConfigError(f"{where}: option {key!r} is not an option: set {RESERVED_OPTIONS[key]} instead")
        if key in provided:
            raise ConfigError(f"{where}: option {key!r} is set from the run's config; remove it from options")
        if key not in params:
            if open_ended:
                continue
            raise ConfigError(f"{where}: unknown option {key!r}{_suggest(key, accepted)} "
                              f"(accepted: {', '.join(accepted) or 'none'})")  # fmt: skip
        if _config_native(params[key]):
            try:
                TypeAdapter(params[key]).validate_python(value, strict=True)
            except ValidationError as exc:
                raise ConfigError(f"{where}: option {key!r}: {exc.errors()[0]['msg']}, got {value!r}") from None


_NATIVE = (str, int, float, bool, type(None))
_NATIVE_CONTAINERS = (list, dict, Sequence, Mapping, typing.Union, types.UnionType)  # not tuple: TOML gives lists


def _config_native(annotation: Any) -> bool:
    """Whether a value read from TOML/YAML can be checked against ``annotation`` as is (strictly): the role
    receives the raw value, so a strict mismatch is a real error. Other types (``Path``...) are left to it."""
    if annotation is Any:
        return False
    if annotation in _NATIVE:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return True
    if origin not in _NATIVE_CONTAINERS:
        return False
    return all(arg is Ellipsis or arg is Any or _config_native(arg) for arg in typing.get_args(annotation))


def _suggest(key: str, accepted: list[str]) -> str:
    if key in GenerationOptions.model_fields:
        return f" ({key} is a generation option: set it in the role's generation table)"
    close = difflib.get_close_matches(key, [*accepted, *GenerationOptions.model_fields], n=1)
    if not close:
        return ""
    return f" (did you mean {'generation.' if close[0] not in accepted else ''}{close[0]}?)"


def list_roles() -> list[str]:
    """Names of every registered role kind."""
    _ensure_builtins()
    return sorted(_ROLES)


def _ensure_builtins() -> None:
    from aloekit.agents import inducer, judge, prompting, responder, scorer, similarity, user  # noqa: F401
