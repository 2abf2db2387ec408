"""Grow many conversation trees at once: sample personas, run the turn graph for each, save every turn."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autogen_core.models import ChatCompletionClient
from pydantic import Field, model_validator

from aloekit.agents.backends import BackendPool, parse_spec
from aloekit.agents.base import Answer, RoleFactory, check_prompts, check_role_options, get_role_factory, role_options
from aloekit.config import GenerationOptions, Settings, resolve_section
from aloekit.errors import AloeError, ConfigError
from aloekit.graphs.generation import Responder as ResponderSlot
from aloekit.graphs.generation import RoleSet, build_generation_graph, initial_state, recursion_limit
from aloekit.graphs.runner import drive_conversations
from aloekit.graphs.storage import Conversation, TreeStore
from aloekit.limits import MAX_CONCURRENCY, MAX_CONVERSATIONS, MAX_TURNS, SQLITE_INT_MAX, SQLITE_INT_MIN

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "local:smollm2"
FIXED_ROLE_NAMES = ("user", "inducer", "judge", "all")
"""Names ``--role`` uses for the fixed roles (and every role), so no responder may take them."""


class RoleConfig(Settings):
    """One role: which registered kind, on which backend, with which generation options."""

    kind: str = Field(min_length=1)
    """A registered role kind (``aloe simulate --help`` lists them), built-in or your own."""
    backend: str = Field(default=DEFAULT_BACKEND, min_length=1)
    """Backend spec for this role."""
    generation: GenerationOptions = GenerationOptions()
    """Generation options for this role's calls."""
    options: dict[str, Any] = {}
    """Keyword arguments for the role (e.g. ``system_prompt`` to replace its template); the role kind's
    ``__init__`` says which it takes, and any other key is an error (see :func:`check_role`)."""


class ResponderConfig(RoleConfig):
    """A candidate responder; ``use_hint`` gives it the inducer's report."""

    name: str = Field(min_length=1)
    """Name shown in trees and usage (``preferred``, ``plain``...)."""
    use_hint: bool = False
    """Whether this responder sees the inducer's hint."""


RESPONDER_DEFAULTS: dict[str, Any] = {"kind": "responder", "use_hint": False,
                                      "generation": {"max_tokens": 96, "temperature": 0.7}}  # fmt: skip
"""What each ``[[simulation.responders]]`` entry of a config file starts from."""


def _responders() -> list[ResponderConfig]:
    return [
        ResponderConfig.model_validate({**RESPONDER_DEFAULTS, "name": "preferred", "use_hint": True}),
        ResponderConfig.model_validate({**RESPONDER_DEFAULTS, "name": "plain"}),
    ]


class SimulationConfig(Settings):
    """Settings of ``aloe simulate`` (the ``[simulation]`` table of a config file)."""

    conversations: int = Field(default=8, ge=1, le=MAX_CONVERSATIONS)
    """How many conversation trees to grow."""
    turns: int = Field(default=10, ge=1, le=MAX_TURNS)
    """User turns per conversation."""
    concurrency: int = Field(default=8, ge=1, le=MAX_CONCURRENCY)
    """Conversations in progress at once (backends keep their own limits too)."""
    seed: int = Field(default=0, ge=SQLITE_INT_MIN, le=SQLITE_INT_MAX)
    """Seeds persona sampling, judge order, which branch continues and every sampled call."""
    eval_set: str = "builtin"
    """Eval set whose personas (profiles and personalities, by content hash) are kept out of sampling."""
    allow_eval_personas: bool = False
    """Sample eval personas too (their scores then measure memory, not adaptation)."""
    user: RoleConfig = RoleConfig(kind="user_simulator", generation=GenerationOptions(max_tokens=64, temperature=0.8))
    """The user simulator."""
    inducer: RoleConfig = RoleConfig(kind="inducer", generation=GenerationOptions(max_tokens=96, temperature=0))
    """The inducer."""
    responders: list[ResponderConfig] = Field(default_factory=_responders, min_length=2)
    """Two or more candidate responders, each with its own backend and hint on/off."""
    judge: RoleConfig = RoleConfig(kind="preference_judge", generation=GenerationOptions(max_tokens=12, temperature=0))
    """The preference judge."""
    judge_both_orders: bool = False
    """Ask the judge twice (order reversed) and record whether it agrees with itself."""
    paper_exact: bool = False
    """Reproduce the authors' judge: fixed order and exact-string verdicts."""
    max_calls: int | None = Field(default=None, ge=1, le=SQLITE_INT_MAX)
    """Stop cleanly after this many model calls (resumable)."""
    max_tokens: int | None = Field(default=None, ge=1, le=SQLITE_INT_MAX)
    """Stop cleanly after this many tokens (resumable)."""

    @model_validator(mode="after")
    def _check_responders(self) -> SimulationConfig:
        names = [r.name for r in self.responders]
        if len(set(names)) != len(names):
            raise ValueError(f"responder names must be unique, got {names}")
        if taken := sorted(set(names) & set(FIXED_ROLE_NAMES)):
            raise ValueError(f"responder name {taken[0]!r} is taken (not one of: {', '.join(FIXED_ROLE_NAMES)})")
        if self.paper_exact and (len(self.responders) != 2 or sum(r.use_hint for r in self.responders) != 1):
            raise ValueError("paper_exact needs exactly two responders, one with use_hint (the authors' setup)")
        if self.paper_exact and self.judge_both_orders:
            raise ValueError("paper_exact asks once, hinted reply first: it cannot be combined with judge_both_orders")
        return self

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any]) -> SimulationConfig:
        """The defaults with each layer (a ``[simulation]`` table, then flags) merged over them key by key.

        ``[simulation.judge] kind = "my_judge"`` keeps the judge's default generation limits; each
        ``[[simulation.responders]]`` entry starts from :data:`RESPONDER_DEFAULTS`.
        """
        return resolve_section(cls, *layers, list_items={"responders": RESPONDER_DEFAULTS})

    def role_names(self) -> list[str]:
        """Names accepted by ``--role NAME=SPEC``."""
        return ["user", "inducer", *(r.name for r in self.responders), "judge"]

    def backend_specs(self) -> list[str]:
        """Every backend spec the run uses, once each, sorted."""
        roles = [self.user, self.inducer, self.judge, *self.responders]
        return sorted({role.backend for role in roles})

    def check_roles(self) -> None:
        """Validate every role as :func:`build_roles` would build it, without backends or model calls: kinds,
        options, option values and templates. Raises a one-line :class:`ConfigError` naming the role."""
        for name, rc, extra, sees_persona, answer in _role_plan(self):
            check_role(name, rc, sees_persona=sees_persona, answer=answer, **extra)

    def with_backend(self, role: str, spec: str) -> SimulationConfig:
        """A copy with ``role`` (or ``all``) on backend ``spec`` (its syntax and prefix checked)."""
        if role not in (*self.role_names(), "all"):
            raise ConfigError(f"unknown role {role!r} in --role (use one of: {', '.join(self.role_names())}, all)")
        parse_spec(spec)  # a typo in the prefix fails now, in one line, not when the run starts
        data = self.model_dump()
        for name in ("user", "inducer", "judge"):
            if role in (name, "all"):
                data[name]["backend"] = spec
        for responder in data["responders"]:
            if role in (responder["name"], "all"):
                responder["backend"] = spec
        return SimulationConfig.model_validate(data)


def _role_factory(name: str, rc: RoleConfig) -> RoleFactory:
    try:
        return get_role_factory(rc.kind)
    except ConfigError as exc:
        raise ConfigError(f"role {name!r}: {exc}") from None


def _construct(
    factory: RoleFactory,
    name: str,
    rc: RoleConfig,
    client: Any,
    extra: dict[str, Any],
    sees_persona: bool,
    chat_template: Callable[[list[dict[str, str]]], Any] | None = None,
) -> Any:
    """Call the factory, turning what it rejects into one line naming the role, then check its templates
    and its prompts (with the backend's ``chat_template`` renderer, when there is one)."""
    where = f"role {name!r} ({rc.kind})"
    try:
        role = factory(name, client, backend=rc.backend, generation=rc.generation.as_create_args(),
                       **rc.options, **extra)  # fmt: skip
    except AloeError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(f"role {name!r}") else f"{where}: {exc}") from None
    except Exception as exc:  # a role's own checks, a **kwargs factory given a bad option, a plugin's bug
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{where}: {type(exc).__name__}" + (f": {detail}" if detail else "")) from exc
    check_templates = getattr(role, "check_templates", None)
    if callable(check_templates):
        check_templates(sees_persona=sees_persona)
    check_prompts(role, where, chat_template, sees_persona=sees_persona)
    return role


def _null_client() -> ChatCompletionClient:
    # Roles are cheap to build; checking one builds it on a client that has no answers and is never called.
    from autogen_ext.models.replay import ReplayChatCompletionClient

    return ReplayChatCompletionClient([])


def _check_answers(name: str, rc: RoleConfig, factory: RoleFactory, answer: Answer | None) -> None:
    """Refuse a kind whose class says it answers otherwise than its place in the graph needs (a judge as the
    user, a user as the judge); a kind that does not say (``answers``), or no ``answer`` asked, passes."""
    answers = getattr(factory, "answers", None)
    answers = frozenset([answers]) if isinstance(answers, str) else answers  # "score" alone, not its letters
    if answer is not None and answers is not None and answer not in answers:
        words = {"text": "text", "verdict": "a verdict", "score": "a score"}
        raise ConfigError(f"role {name!r}: kind {rc.kind} answers with {' or '.join(words[a] for a in sorted(answers))}"
                          f", but the {name} must answer with {words[answer]}")  # fmt: skip


def check_role(
    name: str, config: RoleConfig, *, sees_persona: bool = True, answer: Answer | None = None, **extra: Any
) -> None:
    """Validate role ``name`` as :func:`build_role` would build it, with no backend and no model call.

    Checks that ``config.kind`` is registered and answers with ``answer`` (when given), that every key of
    ``config.options`` is a keyword of the kind's factory (any key if it takes ``**kwargs``) with a value of the
    annotated type, what the role's own ``__init__`` validates, and its templates' placeholders
    (``sees_persona``: whether the graph shows this role the persona). ``extra`` are the keywords aloekit
    itself passes. Raises one-line ConfigError.
    """
    factory = _role_factory(name, config)
    _check_answers(name, config, factory, answer)
    check_role_options(name, config.kind, config.options, provided=extra)
    _construct(factory, name, config, _null_client(), dict(extra), sees_persona)


def _build_role(
    backends: BackendPool,
    name: str,
    rc: RoleConfig,
    extra: dict[str, Any],
    sees_persona: bool,
    answer: Answer | None,
) -> Any:
    factory = _role_factory(name, rc)
    _check_answers(name, rc, factory, answer)
    check_role_options(name, rc.kind, rc.options, provided=extra)  # before a backend client is built
    # An in-process model's own chat template is at hand: the role's prompts are rendered with it now, so
    # a template that rejects them fails here, naming the role, not on the first call of a long run.
    chat_template = getattr(backends.inner(rc.backend), "render_chat", None)
    client = backends.client(rc.backend, role=name)
    return _construct(factory, name, rc, client, extra, sees_persona, chat_template)


def build_role(backends: BackendPool, name: str, rc: RoleConfig, *, answer: Answer | None = None, **extra: Any) -> Any:
    """Instantiate the role kind ``rc.kind`` as ``name`` on its backend client (usage is booked under ``name``);
    ``answer`` is what its place in the graph needs from it (``text``, a ``verdict``, a ``score``).

    Bad options or templates, or a kind that answers otherwise, fail here in one line (:class:`ConfigError`),
    before any model call.
    """
    return _build_role(backends, name, rc, extra, sees_persona=True, answer=answer)


def offered_options(
    name: str, rc: RoleConfig, offered: dict[str, Any], settings: dict[str, str] | None = None
) -> dict[str, Any]:
    """The run-level keywords (``use_hint``, ``paper_exact``...) that the role's kind takes.

    A kind that does not name one in its signature is not given it. ``settings`` maps a keyword to the
    config field it comes from: asking for a true value there that the kind cannot take is an error,
    not silently ignored.
    """
    _role_factory(name, rc)  # an unknown kind fails here, naming the role
    accepted = role_options(rc.kind)
    out = {}
    for key, value in offered.items():
        if accepted is not None and key in accepted:
            out[key] = value
        elif settings and key in settings and value:
            if accepted is not None:
                raise ConfigError(f"role {name!r} ({rc.kind}): {settings[key]} needs a role kind with a {key!r} option")
            out[key] = value  # the factory takes any keyword: hand it over
    return out


def _role_plan(config: SimulationConfig) -> list[tuple[str, RoleConfig, dict[str, Any], bool, Answer]]:
    """(name, config, run-level keywords, sees the persona, what it answers with) for every role of a
    simulation, in build order."""
    judge = {"paper_exact": config.paper_exact, "both_orders": config.judge_both_orders}
    judge_settings = {"paper_exact": "paper_exact", "both_orders": "judge_both_orders"}
    # Responders never see the persona: only the conversation and, for a hinted one, the inducer's report.
    return [
        ("user", config.user, {}, True, "text"),
        ("inducer", config.inducer, {}, True, "text"),
        *((r.name, r, offered_options(r.name, r, {"use_hint": r.use_hint}), False, "text") for r in config.responders),
        ("judge", config.judge, offered_options("judge", config.judge, judge, judge_settings), True, "verdict"),
    ]


def build_roles(config: SimulationConfig, backends: BackendPool) -> RoleSet:
    """Instantiate every configured role on its backend client."""
    roles = {name: _build_role(backends, name, rc, extra, sees_persona, answer)
             for name, rc, extra, sees_persona, answer in _role_plan(config)}  # fmt: skip
    return RoleSet(
        user=roles["user"],
        inducer=roles["inducer"],
        responders=[ResponderSlot(roles[r.name], use_hint=r.use_hint, backend=r.backend) for r in config.responders],
        judge=roles["judge"],
    )


@dataclass
class SimulationSummary:
    """How a simulation run ended."""

    run_id: str
    statuses: dict[str, int]
    turns_saved: int = 0
    unlabelled_turns: int = 0
    """Turns whose judge gave no valid verdict (kept in the tree, left out of training data)."""
    failures: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether every conversation is complete."""
        return set(self.statuses) <= {"complete"}


async def run_conversations(
    trees: TreeStore,
    backends: BackendPool,
    config: SimulationConfig,
    run_id: str,
    on_turn: Callable[[str, int], None] | None = None,
    on_done: Callable[[str, str], None] | None = None,
) -> SimulationSummary:
    """Continue every unfinished conversation of ``run_id`` from its last saved turn, ``concurrency`` at a time.

    A conversation whose backend fails after its retries is marked failed with the reason; the others
    go on. A spent budget marks the rest incomplete. Either way, a later call resumes them.
    """
    graph = build_generation_graph(build_roles(config, backends))
    summary = SimulationSummary(run_id, {})

    async def advance(conversation: Conversation) -> None:
        done = trees.records(conversation.id)
        if len(done) >= conversation.max_turns:
            return
        state = initial_state(conversation.id, conversation.persona, conversation.max_turns, config.seed, done,
                              conversation_index=conversation.position)  # fmt: skip
        limit = {"recursion_limit": recursion_limit(conversation.max_turns)}
        async for update in graph.astream(state, stream_mode="updates", config=limit):
            if "select" in update:
                record = update["select"]["records"][-1]
                trees.save_turn(record, complete=record.turn >= conversation.max_turns)
                summary.turns_saved += 1
                summary.unlabelled_turns += not record.labelled
                if on_turn:
                    on_turn(conversation.id, record.turn)

    summary.failures = await drive_conversations(trees, run_id, config.concurrency, advance, on_done)
    summary.statuses = trees.status_counts(run_id)
    return summary
