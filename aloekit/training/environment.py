"""The simulated user as an RL environment: a persona-conditioned user talks, the policy replies, a judge rewards.

One :class:`SimulatedUserEnv` runs one conversation at a time. ``reset(persona, seed)`` returns the opening
messages (the user simulator's first turn). ``step(reply)`` (or ``step([reply_1, ..., reply_G])``, a group of
sampled replies to the same turn) scores every reply with the judge, continues the conversation with the
best-scored one (RLPA's best-of-n), asks the simulator for the next user message and returns
``(done, next_user_message, reward, info)``. What the policy is trained on is only ever its own replies:
the simulator's messages reach it as prompt, never as a target. Turns can be stored as trees like
``aloe simulate``'s (kind ``rollout``): every candidate a node with its role and reward, the continued one
marked chosen, so ``aloe view`` and ``aloe trees show`` show them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from aloekit.agents.base import CallRecord, Message, Role, RoleView
from aloekit.agents.judge import INVALID, Verdict
from aloekit.agents.scorer import Score
from aloekit.errors import AloeError
from aloekit.graphs.records import CandidateRecord, TurnRecord
from aloekit.graphs.storage import TreeStore
from aloekit.personas.models import PersonaPair

T = TypeVar("T")
ROLLOUT_KIND = "rollout"


class StepResult(NamedTuple):
    """What :meth:`SimulatedUserEnv.step` returns; unpacks as ``done, next_user_message, reward, info``."""

    done: bool
    next_user_message: str | None
    """The simulator's next message, or None once the turn limit is reached."""
    reward: float | None
    """The judge's score of the reply the conversation continued with (None: unscored)."""
    info: dict[str, Any]
    """``rewards`` (every reply's reward, in the order given), ``continued`` (its index), ``turn``; with a
    profile scorer, ``profile_scores`` (its score of every reply)."""


@dataclass
class _Episode:
    persona: PersonaPair
    seed: int
    position: int
    conversation_id: str
    history: list[Message] = field(default_factory=list)
    user_message: str = ""
    user_calls: list[CallRecord] = field(default_factory=list)
    turn: int = 1
    done: bool = False


def best_index(rewards: Sequence[float | None]) -> int:
    """The reply a group continues with: the highest reward, the first on ties; the first if none is scored."""
    scored = [(r, -i) for i, r in enumerate(rewards) if r is not None]
    return -max(scored)[1] if scored else 0


class SimulatedUserEnv:
    """A persona-conditioned simulated user and a judge, as an environment for online RL.

    ``user`` is a user-simulator role and ``judge`` a scorer (a role returning a :class:`Score`, such as
    ``alignment_scorer`` in expected mode or ``persona_similarity``). With ``trees`` and ``run_id`` every
    turn is saved as a tree turn in one transaction. The async methods (``areset``, ``astep``) are the
    core; ``reset`` and ``step`` run them on the environment's own event loop, for synchronous trainers.

    Example:
        >>> env = SimulatedUserEnv(user_role, judge_role, max_turns=3)      # doctest: +SKIP
        >>> messages = env.reset(persona, seed=0)                           # doctest: +SKIP
        >>> done, user_message, reward, info = env.step("Hi! How was the climb?")  # doctest: +SKIP
    """

    def __init__(
        self,
        user: Role,
        judge: Role,
        *,
        max_turns: int,
        trees: TreeStore | None = None,
        run_id: str | None = None,
        policy_name: str = "policy",
        policy_backend: str = "",
        profile: Role | None = None,
        profile_weight: float = 1.0,
    ) -> None:
        if max_turns < 1:
            raise AloeError(f"max_turns must be at least 1, got {max_turns}")
        if (trees is None) != (run_id is None):
            raise AloeError("give both trees and run_id to store rollouts, or neither")
        self.user, self.judge, self.max_turns = user, judge, max_turns
        self.trees, self.run_id = trees, run_id
        self.policy_name, self.policy_backend = policy_name, policy_backend
        self.profile, self.profile_weight = profile, profile_weight
        self._episode: _Episode | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- async core -------------------------------------------------------------------------------------------

    def _view(self, episode: _Episode, **extra: Any) -> RoleView:
        return RoleView(conversation_id=episode.conversation_id, turn=episode.turn, history=tuple(episode.history),
                        persona=episode.persona, seed=episode.seed, conversation_index=episode.position,
                        **extra)  # fmt: skip

    async def _user_turn(self, episode: _Episode) -> None:
        out = await self.user(self._view(episode))
        episode.user_message, episode.user_calls = out.text, list(out.calls)

    async def areset(self, persona: PersonaPair, seed: int = 0, position: int = 0) -> list[Message]:
        """Start a conversation with ``persona``: the opening messages (the simulator's first turn)."""
        if self.trees is not None and self.run_id is not None:
            (conversation_id,) = self._create(persona, position)
        else:
            conversation_id = f"episode-{position:04d}"
        episode = _Episode(persona=persona, seed=seed, position=position, conversation_id=conversation_id)
        self._episode = episode  # before the await: a failed opening still names the conversation it left
        await self._user_turn(episode)
        return self.messages()

    def _create(self, persona: PersonaPair, position: int) -> list[str]:
        assert self.trees is not None and self.run_id is not None
        return self.trees.create_conversations(self.run_id, [persona], self.max_turns, kind=ROLLOUT_KIND,
                                               first_position=position)  # fmt: skip

    def messages(self) -> list[Message]:
        """The conversation so far, ending with the user message the policy must answer."""
        episode = self._require()
        return [*episode.history, {"role": "user", "content": episode.user_message}]

    @property
    def started(self) -> bool:
        """Whether a conversation has been started (by :meth:`reset`)."""
        return self._episode is not None

    @property
    def conversation_id(self) -> str:
        """The id of the current conversation (in the store, when the environment stores turns)."""
        return self._require().conversation_id

    @property
    def turn(self) -> int:
        """The turn the policy is answering (1-based)."""
        return self._require().turn

    @property
    def done(self) -> bool:
        """Whether the turn limit has been reached."""
        return self._require().done

    def _require(self) -> _Episode:
        if self._episode is None:
            raise AloeError("call reset(persona) before using the environment")
        return self._episode

    async def ascore(self, replies: Sequence[str]) -> tuple[list[float | None], list[Score], list[CallRecord]]:
        """The reward of each reply to the current user message (None: unscored), without stepping: the
        judge's score, plus ``profile_weight`` x the profile scorer's when there is one (RLPA's profile term).
        Every score is returned, the judge's first."""
        episode = self._require()
        views = [self._view(episode, user_message=episode.user_message, candidates=(reply,)) for reply in replies]
        scorers = [self.judge, *([self.profile] if self.profile is not None else [])]
        # One gather for every call: in-process backends batch them.
        outputs = await asyncio.gather(*(scorer(view) for scorer in scorers for view in views))
        if not all(isinstance(out.value, Score) for out in outputs):
            names = ", ".join(repr(getattr(scorer, "name", "?")) for scorer in scorers)
            raise AloeError(f"the environment's scorers ({names}) must return a Score")
        scores = [out.value for out in outputs]
        judged, profiled = scores[: len(views)], scores[len(views) :]
        rewards = [s.score for s in judged]
        if profiled:
            rewards = [None if r is None or p.score is None else round(r + self.profile_weight * p.score, 6)
                       for r, p in zip(rewards, profiled, strict=True)]  # fmt: skip
        return rewards, scores, [call for out in outputs for call in out.calls]

    async def astep(self, replies: str | Sequence[str], rewards: Sequence[float | None] | None = None) -> StepResult:
        """Answer the current user message with ``replies`` (one or a sampled group), scored by the judge unless
        ``rewards`` are given; continue with the best; return the next user message, or ``done``."""
        episode = self._require()
        if episode.done:  # checked before anything is called or written
            raise AloeError(f"{episode.conversation_id}: the conversation is over (turn limit {self.max_turns})")
        group = [replies] if isinstance(replies, str) else list(replies)
        if not group:
            raise AloeError("step needs at least one reply")
        judge_calls: list[CallRecord] = []
        raw: list[str] = []
        scores: list[Score] = []
        if rewards is None:
            values, scores, judge_calls = await self.ascore(group)
            # One entry per reply: its judge's answers, then its profile scorer's.
            raw = [" | ".join(a for s in scores[i :: len(group)] for a in s.raw) for i in range(len(group))]
        else:
            if len(rewards) != len(group):
                raise AloeError(f"step got {len(group)} replies and {len(rewards)} rewards")
            values = list(rewards)
            raw = [f"reward {r}" for r in values]
        continued = best_index(values)
        record = self._record(episode, group, values, raw, judge_calls, continued)
        finished = episode.turn >= self.max_turns
        info: dict[str, Any] = {"rewards": values, "continued": continued, "turn": episode.turn}
        if self.profile is not None and scores:
            info["profile_scores"] = [s.score for s in scores[len(group) :]]
        history = [*episode.history, {"role": "user", "content": episode.user_message},
                   {"role": "assistant", "content": group[continued]}]  # fmt: skip
        following = None
        if not finished:  # the simulator's next message first: if it fails, the episode is left as it was
            following = _Episode(
                persona=episode.persona,
                seed=episode.seed,
                position=episode.position,
                conversation_id=episode.conversation_id,
                history=history,
                turn=episode.turn + 1,
            )
            await self._user_turn(following)
        if self.trees is not None:
            self.trees.save_turn(record, complete=finished)
        if following is None:
            episode.history, episode.done = history, True
            return StepResult(True, None, values[continued], info)
        self._episode = following
        return StepResult(False, following.user_message, values[continued], info)

    def _record(self, episode: _Episode, group: list[str], rewards: list[float | None], raw: list[str],
                judge_calls: list[CallRecord], continued: int) -> TurnRecord:  # fmt: skip
        candidates = [CandidateRecord(index=i, responder=self.policy_name, backend=self.policy_backend,
                                      used_hint=False, text=text, calls=[], reward=reward)
                      for i, (text, reward) in enumerate(zip(group, rewards, strict=True))]  # fmt: skip
        # The judge's "verdict" is the best-of-n choice; a group of one is a choice without an alternative.
        preferred = continued if len(group) > 1 and rewards[continued] is not None else INVALID
        verdict = Verdict(preferred=preferred, order=list(range(len(group))), raw=raw)
        return TurnRecord(conversation_id=episode.conversation_id, turn=episode.turn, user_message=episode.user_message,
                          user_calls=episode.user_calls, hint=None, inducer_text="", inducer_calls=[],
                          candidates=candidates, verdict=verdict, judge_calls=judge_calls,
                          continued=continued)  # fmt: skip

    # --- synchronous wrappers -----------------------------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the environment's event loop (one loop for its life: clients bind to it)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def reset(self, persona: PersonaPair, seed: int = 0, position: int = 0) -> list[Message]:
        """:meth:`areset`, synchronously."""
        return self.run(self.areset(persona, seed, position))

    def step(self, replies: str | Sequence[str], rewards: Sequence[float | None] | None = None) -> StepResult:
        """:meth:`astep`, synchronously."""
        return self.run(self.astep(replies, rewards))

    def close(self) -> None:
        """Close the event loop of the synchronous wrappers."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None
