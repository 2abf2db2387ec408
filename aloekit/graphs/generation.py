"""The ALOE turn loop as a LangGraph state machine:
user -> inducer -> responders (in parallel) -> judge -> select -> next turn or end."""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from aloekit.agents.base import Message, Role, RoleView
from aloekit.agents.judge import Verdict
from aloekit.graphs.records import CandidateRecord, TurnRecord
from aloekit.personas.models import PersonaPair
from aloekit.seeds import draw_seed


@dataclass
class Responder:
    """A candidate responder: its role and whether it is given the inducer's hint."""

    role: Role
    use_hint: bool
    backend: str = ""


@dataclass
class RoleSet:
    """The roles one conversation uses."""

    user: Role
    inducer: Role
    responders: list[Responder]
    judge: Role


def _collect(old: list[CandidateRecord], new: list[CandidateRecord]) -> list[CandidateRecord]:
    # Responders each add one candidate in parallel; the user node sends [] to clear them for a new turn.
    return [*old, *new] if new else []


class GenerationState(TypedDict, total=False):
    """State of one conversation as it moves through the graph."""

    conversation_id: str
    conversation_index: int
    persona: PersonaPair
    seed: int
    turn: int
    max_turns: int
    history: list[Message]
    user_message: str
    user_calls: list
    hint: str | None
    inducer_text: str
    inducer_calls: list
    responder_index: int
    candidates: Annotated[list[CandidateRecord], _collect]
    verdict: Verdict
    judge_calls: list
    records: Annotated[list[TurnRecord], operator.add]


def continue_index(seed: int, conversation_index: int, turn: int, n_candidates: int) -> int:
    """Which candidate the conversation continues with: uniform, drawn from (seed, conversation index, turn)."""
    return random.Random(draw_seed(seed, conversation_index, turn, "continue")).randrange(n_candidates)


def build_generation_graph(roles: RoleSet, checkpointer: Any = None) -> Any:
    """Compile the turn loop for ``roles``; run it with ``ainvoke``/``astream`` on a :class:`GenerationState`."""

    def view(state: GenerationState, *, persona: bool = True, **extra: Any) -> RoleView:
        return RoleView(
            conversation_id=state["conversation_id"],
            turn=state["turn"],
            history=tuple(state.get("history", [])),
            persona=state["persona"] if persona else None,
            seed=state.get("seed", 0),
            conversation_index=state.get("conversation_index", 0),
            **extra,
        )

    async def user(state: GenerationState) -> dict[str, Any]:
        out = await roles.user(view(state))
        return {"user_message": out.text, "user_calls": out.calls, "candidates": []}

    async def inducer(state: GenerationState) -> dict[str, Any]:
        out = await roles.inducer(view(state, user_message=state["user_message"]))
        # An inducer's parsed value is the hint (None: nothing revealed yet).
        return {"hint": out.value, "inducer_text": out.text, "inducer_calls": out.calls}

    # Every node and branch is a coroutine function, even those that await nothing: LangGraph runs a plain
    # function in a thread pool, and the threads' timing would then reorder concurrent conversations' calls
    # (a replay backend's answers, a batch's rows) from one run to the next.
    async def fan_out(state: GenerationState) -> list[Send]:
        return [Send("respond", {**state, "responder_index": i}) for i in range(len(roles.responders))]

    async def respond(state: GenerationState) -> dict[str, Any]:
        index = state["responder_index"]
        responder = roles.responders[index]
        hint = state.get("hint") if responder.use_hint else None
        # Responders never see the persona: only the conversation and, for the preferred one, the hint.
        out = await responder.role(view(state, persona=False, user_message=state["user_message"], hint=hint))
        record = CandidateRecord(index=index, responder=responder.role.name, backend=responder.backend,
                                 used_hint=responder.use_hint, text=out.text, calls=out.calls)  # fmt: skip
        return {"candidates": [record]}

    async def judge(state: GenerationState) -> dict[str, Any]:
        candidates = sorted(state["candidates"], key=lambda c: c.index)
        texts, hinted = tuple(c.text for c in candidates), tuple(c.used_hint for c in candidates)
        out = await roles.judge(view(state, user_message=state["user_message"], candidates=texts, hinted=hinted))
        return {"verdict": out.value, "judge_calls": out.calls}

    async def select(state: GenerationState) -> dict[str, Any]:
        candidates = sorted(state["candidates"], key=lambda c: c.index)
        index = state.get("conversation_index", 0)
        chosen = continue_index(state.get("seed", 0), index, state["turn"], len(candidates))
        record = TurnRecord(
            conversation_id=state["conversation_id"],
            turn=state["turn"],
            user_message=state["user_message"],
            user_calls=state["user_calls"],
            hint=state.get("hint"),
            inducer_text=state["inducer_text"],
            inducer_calls=state["inducer_calls"],
            candidates=candidates,
            verdict=state["verdict"],
            judge_calls=state["judge_calls"],
            continued=chosen,
        )
        history = [*state.get("history", []), {"role": "user", "content": state["user_message"]},
                   {"role": "assistant", "content": candidates[chosen].text}]  # fmt: skip
        return {"records": [record], "history": history, "turn": state["turn"] + 1}

    async def next_step(state: GenerationState) -> Literal["user", "__end__"]:
        return "user" if state["turn"] <= state["max_turns"] else END

    builder = StateGraph(GenerationState)
    builder.add_node("user", user)
    builder.add_node("inducer", inducer)
    builder.add_node("respond", respond)
    builder.add_node("judge", judge)
    builder.add_node("select", select)
    builder.add_edge(START, "user")
    builder.add_edge("user", "inducer")
    builder.add_conditional_edges("inducer", fan_out, ["respond"])
    builder.add_edge("respond", "judge")
    builder.add_edge("judge", "select")
    builder.add_conditional_edges("select", next_step, {"user": "user", END: END})
    return builder.compile(checkpointer=checkpointer)


def initial_state(
    conversation_id: str,
    persona: PersonaPair,
    max_turns: int,
    seed: int,
    done: list[TurnRecord] | None = None,
    conversation_index: int = 0,
) -> GenerationState:
    """The state to start (or, given the saved turns, resume) a conversation from."""
    history: list[Message] = []
    for record in done or []:
        history += [{"role": "user", "content": record.user_message},
                    {"role": "assistant", "content": record.candidates[record.continued].text}]  # fmt: skip
    return GenerationState(
        conversation_id=conversation_id, conversation_index=conversation_index, persona=persona, seed=seed,
        turn=len(done or []) + 1,
        max_turns=max_turns, history=history, candidates=[], records=[],
    )  # fmt: skip


def recursion_limit(max_turns: int) -> int:
    """LangGraph's step cap for a conversation of ``max_turns`` turns (each turn is 5 supersteps)."""
    return 10 + 6 * max_turns
