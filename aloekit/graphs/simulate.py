"""Grow many conversation trees at once: sample personas, run the turn graph for each, save every turn."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aloekit.agents.backends import BackendPool
from aloekit.agents.base import get_role_factory
from aloekit.config import GenerationOptions
from aloekit.errors import AloeError
from aloekit.graphs.generation import Responder as ResponderSlot
from aloekit.graphs.generation import RoleSet, build_generation_graph, initial_state, recursion_limit
from aloekit.graphs.runner import drive_conversations
from aloekit.graphs.storage import Conversation, TreeStore

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "local:smollm2"


class RoleConfig(BaseModel):
    """One role: which registered kind, on which backend, with which generation options."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    """A registered role kind (``aloe simulate --help`` lists them), built-in or your own."""
    backend: str = DEFAULT_BACKEND
    """Backend spec for this role."""
    generation: GenerationOptions = GenerationOptions()
    """Generation options for this role's calls."""
    options: dict[str, Any] = {}
    """Extra keyword arguments for the role (e.g. ``system_prompt`` to replace its template)."""


class ResponderConfig(RoleConfig):
    """A candidate responder; ``use_hint`` gives it the inducer's report."""

    name: str
    """Name shown in trees and usage (``preferred``, ``plain``...)."""
    use_hint: bool = False
    """Whether this responder sees the inducer's hint."""


def _responders() -> list[ResponderConfig]:
    options = GenerationOptions(max_tokens=96, temperature=0.7)
    return [
        ResponderConfig(name="preferred", kind="responder", use_hint=True, generation=options),
        ResponderConfig(name="plain", kind="responder", use_hint=False, generation=options),
    ]


class SimulationConfig(BaseModel):
    """Settings of ``aloe simulate`` (the ``[simulation]`` table of a config file)."""

    model_config = ConfigDict(extra="forbid")

    conversations: int = Field(default=8, gt=0)
    """How many conversation trees to grow."""
    turns: int = Field(default=10, gt=0)
    """User turns per conversation."""
    concurrency: int = Field(default=8, gt=0)
    """Conversations in progress at once (backends keep their own limits too)."""
    seed: int = 0
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
    max_calls: int | None = Field(default=None, gt=0)
    """Stop cleanly after this many model calls (resumable)."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Stop cleanly after this many tokens (resumable)."""

    @model_validator(mode="after")
    def _check_responders(self) -> SimulationConfig:
        names = [r.name for r in self.responders]
        if len(set(names)) != len(names):
            raise ValueError(f"responder names must be unique, got {names}")
        if self.paper_exact and (len(self.responders) != 2 or sum(r.use_hint for r in self.responders) != 1):
            raise ValueError("paper_exact needs exactly two responders, one with use_hint (the authors' setup)")
        if self.paper_exact and self.judge_both_orders:
            raise ValueError("paper_exact asks once, hinted reply first: it cannot be combined with judge_both_orders")
        return self

    def role_names(self) -> list[str]:
        """Names accepted by ``--role NAME=SPEC``."""
        return ["user", "inducer", *(r.name for r in self.responders), "judge"]

    def with_backend(self, role: str, spec: str) -> SimulationConfig:
        """A copy with ``role`` (or ``all``) on backend ``spec``."""
        if role not in (*self.role_names(), "all"):
            raise AloeError(f"unknown role {role!r} in --role (use one of: {', '.join(self.role_names())}, all)")
        data = self.model_dump()
        for name in ("user", "inducer", "judge"):
            if role in (name, "all"):
                data[name]["backend"] = spec
        for responder in data["responders"]:
            if role in (responder["name"], "all"):
                responder["backend"] = spec
        return SimulationConfig.model_validate(data)


def build_role(backends: BackendPool, name: str, rc: RoleConfig, **extra: Any) -> Any:
    """Instantiate the role kind ``rc.kind`` as ``name`` on its backend client (usage is booked under ``name``)."""
    factory = get_role_factory(rc.kind)
    client = backends.client(rc.backend, role=name)
    return factory(
        name, client, backend=rc.backend, generation=rc.generation.as_create_args(), **{**rc.options, **extra}
    )


def build_roles(config: SimulationConfig, backends: BackendPool) -> RoleSet:
    """Instantiate every configured role on its backend client."""

    def build(name: str, rc: RoleConfig, **extra: Any) -> Any:
        return build_role(backends, name, rc, **extra)

    judge_extra = {}
    if config.judge.kind == "preference_judge":
        judge_extra = {"paper_exact": config.paper_exact, "both_orders": config.judge_both_orders}
    return RoleSet(
        user=build("user", config.user),
        inducer=build("inducer", config.inducer),
        responders=[
            ResponderSlot(
                build(r.name, r, **({"use_hint": r.use_hint} if r.kind == "responder" else {})),
                use_hint=r.use_hint,
                backend=r.backend,
            )  # fmt: skip
            for r in config.responders
        ],
        judge=build("judge", config.judge, **judge_extra),
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
