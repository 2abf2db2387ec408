"""The ALOE evaluation task, shaped like an inspect_ai task: a dataset of personas, a solver (a LangGraph
conversation between a simulated user and the model under test), a scorer (the 1-5 judge), metrics."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field, field_validator
from typing_extensions import TypedDict

from aloekit.agents.backends import BackendPool
from aloekit.agents.base import Answer, CallRecord, Message, Role, RoleView
from aloekit.agents.scorer import Score
from aloekit.config import GenerationOptions, Settings, resolve_section
from aloekit.errors import AloeError, ConfigError
from aloekit.evaluation.baselines import get_baseline
from aloekit.graphs.runner import drive_conversations
from aloekit.graphs.simulate import (
    MAX_CONCURRENCY,
    MAX_CONVERSATIONS,
    MAX_TURNS,
    SQLITE_INT_MAX,
    SQLITE_INT_MIN,
    RoleConfig,
    build_role,
    check_role,
)
from aloekit.graphs.storage import Conversation, TreeStore
from aloekit.graphs.tree import root_id
from aloekit.personas.io import read_persona_file
from aloekit.personas.models import Persona, PersonaPair
from aloekit.store import Store, utcnow

Mode = Literal["live", "replay"]
BUILTIN_EVAL_SET = "builtin"


def builtin_eval_dir() -> Path:
    """A small eval set written for aloekit's offline demos (8 profiles x 5 personalities; not the paper's)."""
    return Path(str(resources.files("aloekit.evaluation") / "data"))


class EvalSetError(AloeError):
    """An eval set folder or one of its files is missing or malformed; the message names the file and line."""


EVAL_SET_FILES = ("profile_eval.jsonl", "personality_eval.jsonl")


def eval_files(source: str | Path) -> tuple[Path, Path]:
    """The profile and personality files of an eval set: ``builtin``, or a folder holding the paper's two files."""
    folder = builtin_eval_dir() if str(source) == BUILTIN_EVAL_SET else Path(source)
    expected = f"give builtin or a folder holding {' and '.join(EVAL_SET_FILES)}"
    if not folder.exists():
        raise EvalSetError(f"eval set {folder}: folder not found ({expected})")
    if not folder.is_dir():
        raise EvalSetError(f"eval set {folder}: not a folder ({expected})")
    profiles, personalities = folder / EVAL_SET_FILES[0], folder / EVAL_SET_FILES[1]
    for path in (profiles, personalities):
        if not path.exists():
            raise EvalSetError(f"eval set {folder}: missing {path.name}")
        if not path.is_file():
            raise EvalSetError(f"eval set {folder}: {path.name} is not a file")
    return profiles, personalities


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_eval_file(path: Path, kind: Literal["profile", "personality"]) -> list[Persona]:
    """Every persona of one eval set file; errors the reader does not turn into one line are turned here, and a
    persona given twice is refused: scores are keyed by persona, so its second conversation's would overwrite
    the first's."""
    try:
        parsed = read_persona_file(path, kind)
    except UnicodeDecodeError:  # the error's offset is into whatever chunk was read: find the line again
        lines = path.read_bytes().split(b"\n")
        line = next((n for n, text in enumerate(lines, start=1) if not _is_utf8(text)), len(lines))
        raise EvalSetError(f"{path}: line {line}: not UTF-8 text") from None
    except RecursionError:  # a line like "[" * 100000: json recurses once per level
        raise EvalSetError(f"{path}: JSON nested too deeply") from None
    except OSError as exc:
        raise EvalSetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if parsed.bad:
        raise EvalSetError(parsed.bad[0])
    first: dict[str, str] = {}
    for entry in parsed.entries:
        for persona in entry.personas:
            if persona.id in first:
                raise EvalSetError(f"{entry.where}: the same {kind} as on line {first[persona.id]} (each must differ)")
            first[persona.id] = entry.where.rpartition(":")[2]
    if not parsed.personas:
        raise EvalSetError(f"{path}: no {kind}s in it")
    return parsed.personas


def load_eval_personas(source: str | Path, n_personalities: int = 5) -> list[PersonaPair]:
    """Eval personas from ``builtin`` or a folder holding the paper's two files: every profile x the first
    ``n_personalities`` personalities (the paper's files: 20 x 5), in a stable order in which profiles and
    personalities each cycle, so that ``--personas N`` evaluates N people as different as the set allows
    rather than one profile's variants."""
    profiles_path, personalities_path = eval_files(source)
    profiles = _read_eval_file(profiles_path, "profile")
    personalities = _read_eval_file(personalities_path, "personality")
    if len(personalities) < n_personalities:
        raise EvalSetError(
            f"{personalities_path}: has {len(personalities)}, the benchmark needs at least {n_personalities} "
            "personalities"
        )
    chosen = personalities[:n_personalities]
    # Pair k is profile k mod P with personality (k + k div lcm(P, Q)) mod Q: both cycle in every prefix, and
    # the shift per block of lcm(P, Q) pairs makes the gcd(P, Q) blocks visit every cell of the grid once.
    p, q = len(profiles), len(chosen)
    block = math.lcm(p, q)
    return [PersonaPair(profile=profiles[k % p], personality=chosen[(k + k // block) % q]) for k in range(p * q)]


def check_eval_set(source: str | Path, n_personalities: int = 5) -> int:
    """Read and check an eval set (``builtin`` or a folder) without writing anything; returns its number of
    persona pairs, or raises :class:`EvalSetError` naming the file and line."""
    return len(load_eval_personas(source, n_personalities))


def eval_persona_ids(source: str | Path) -> set[str]:
    """Content-hash ids of every profile and personality in an eval set's files (all of them, not only the
    first five personalities the benchmark pairs), to keep them out of training."""
    profiles, personalities = eval_files(source)
    return {p.id for path, kind in ((profiles, "profile"), (personalities, "personality"))
            for p in _read_eval_file(path, kind)}  # fmt: skip


class EvalConfig(Settings):
    """Settings of one ``aloe eval`` run."""

    model: str
    """Backend spec of the model under test."""
    mode: Mode = "live"
    """live: the simulated user reacts to this model (the paper's protocol); replay: user turns come from
    the continued path of stored trees, so every model sees the same user side."""
    eval_set: str = BUILTIN_EVAL_SET
    """``builtin``, or a folder with profile_eval.jsonl and personality_eval.jsonl (the paper's format)."""
    replay_run: str | None = None
    """replay mode: the run whose conversations supply personas and user turns."""
    personas: int | None = Field(default=None, ge=1, le=MAX_CONVERSATIONS)
    """Evaluate only the first N personas."""
    turns: int = Field(default=10, ge=1, le=MAX_TURNS)
    """Turns per conversation (K)."""
    concurrency: int = Field(default=16, ge=1, le=MAX_CONCURRENCY)
    """Conversations in progress at once."""
    seed: int = Field(default=0, ge=SQLITE_INT_MIN, le=SQLITE_INT_MAX)
    """Seed for anything random."""
    baseline: str = "blind"
    """A registered baseline (:mod:`aloekit.evaluation.baselines`): blind (the model as is), oracle (told the
    true persona), the prompting baselines reminder, cot and self-critique, or a plugin's."""
    user: RoleConfig = RoleConfig(kind="user_simulator", generation=GenerationOptions(max_tokens=64, temperature=0.8))
    """The user simulator (live mode)."""
    judge: RoleConfig = RoleConfig(kind="alignment_scorer", generation=GenerationOptions(max_tokens=8, temperature=0))
    """The 1-5 scorer."""
    second_judge: RoleConfig | None = None
    """An independent second scorer of every reply (``kind = "persona_similarity"``, say): its metrics and its
    agreement with the judge are reported beside the judge's; the judge's numbers stay the headline."""
    model_generation: GenerationOptions = GenerationOptions(max_tokens=128, temperature=0)
    """Generation options of the model under test."""
    max_calls: int | None = Field(default=None, ge=1, le=SQLITE_INT_MAX)
    """Stop cleanly after this many model calls (resumable)."""
    max_tokens: int | None = Field(default=None, ge=1, le=SQLITE_INT_MAX)
    """Stop cleanly after this many tokens (resumable)."""

    @field_validator("baseline")
    @classmethod
    def _known_baseline(cls, name: str) -> str:
        try:
            get_baseline(name)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None  # pydantic then names the field
        return name

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any]) -> EvalConfig:
        """The defaults with each layer (an ``[evaluation]`` table, then flags) merged over them key by key."""
        return resolve_section(cls, *layers)

    def model_role(self) -> RoleConfig:
        """The model under test as a role, as its baseline builds it."""
        baseline = get_baseline(self.baseline)
        return RoleConfig(kind=baseline.kind, backend=self.model, generation=self.model_generation,
                          options=dict(baseline.options))  # fmt: skip

    def role_plan(self) -> list[tuple[str, RoleConfig, bool, Answer]]:
        """(name, config, sees the persona, what it answers with) for the model, the scorer, the second scorer
        and (live mode) the user simulator."""
        plan: list[tuple[str, RoleConfig, bool, Answer]] = [
            ("model", self.model_role(), get_baseline(self.baseline).sees_persona, "text"),
            ("judge", self.judge, True, "score"),
        ]
        if self.second_judge is not None:
            plan.append(("second_judge", self.second_judge, True, "score"))
        if self.mode == "live":
            plan.append(("user", self.user, True, "text"))
        return plan

    def check_roles(self) -> None:
        """Validate every role of :meth:`role_plan` without backends or model calls."""
        for name, rc, sees_persona, answer in self.role_plan():
            check_role(name, rc, sees_persona=sees_persona, answer=answer)

    def with_backend(self, role: str, spec: str) -> EvalConfig:
        """A copy with ``user`` or ``judge`` on backend ``spec``."""
        if role not in ("user", "judge"):
            raise AloeError(f"unknown role {role!r} in --role (use user or judge; --model sets the model under test)")
        return self.model_copy(update={role: getattr(self, role).model_copy(update={"backend": spec})})


class EvalTurnRecord(BaseModel):
    """One evaluated turn."""

    conversation_id: str
    turn: int
    user_message: str
    user_calls: list[CallRecord]
    reply: str
    model_calls: list[CallRecord]
    score: Score
    judge_calls: list[CallRecord]
    second_score: Score | None = None
    """The second judge's score, when one is configured."""
    second_judge_calls: list[CallRecord] = []
    """The second judge's model calls (none for persona_similarity)."""


class EvalState(TypedDict, total=False):
    """State of one evaluation conversation in the graph."""

    conversation_id: str
    conversation_index: int
    persona: PersonaPair
    seed: int
    turn: int
    max_turns: int
    history: list[Message]
    replay_user_messages: list[str] | None
    user_message: str
    user_calls: list
    reply: str
    model_calls: list
    record: EvalTurnRecord


@dataclass
class EvalRoles:
    """The roles of an evaluation: the user simulator (None in replay mode), the model, the scorer."""

    model: Role
    scorer: Role
    user: Role | None = None
    model_sees_persona: bool = False
    second_scorer: Role | None = None


def build_eval_graph(roles: EvalRoles) -> Any:
    """user (or replayed user turn) -> model -> score -> next turn or end."""

    def view(state: EvalState, persona: bool = True, **extra: Any) -> RoleView:
        return RoleView(conversation_id=state["conversation_id"], turn=state["turn"],
                        history=tuple(state.get("history", [])), persona=state["persona"] if persona else None,
                        seed=state.get("seed", 0), conversation_index=state.get("conversation_index", 0),
                        **extra)  # fmt: skip

    async def user(state: EvalState) -> dict[str, Any]:
        replayed = state.get("replay_user_messages")
        if replayed is not None:
            return {"user_message": replayed[state["turn"] - 1], "user_calls": []}
        out = await roles.user(view(state))
        return {"user_message": out.text, "user_calls": out.calls}

    async def model(state: EvalState) -> dict[str, Any]:
        out = await roles.model(view(state, persona=roles.model_sees_persona, user_message=state["user_message"]))
        return {"reply": out.text, "model_calls": out.calls}

    async def score(state: EvalState) -> dict[str, Any]:
        shown = view(state, user_message=state["user_message"], candidates=(state["reply"],))
        scorers = [roles.scorer, *([roles.second_scorer] if roles.second_scorer is not None else [])]
        out, *second = await asyncio.gather(*(scorer(shown) for scorer in scorers))
        for name, result in zip(("judge", "second_judge"), (out, *second), strict=False):
            if not isinstance(result.value, Score):
                raise AloeError(f"role {name!r} must be a scorer (return a Score), got {type(result.value).__name__}")
        record = EvalTurnRecord(
            conversation_id=state["conversation_id"], turn=state["turn"], user_message=state["user_message"],
            user_calls=state["user_calls"], reply=state["reply"], model_calls=state["model_calls"],
            score=out.value, judge_calls=out.calls, second_score=second[0].value if second else None,
            second_judge_calls=second[0].calls if second else [],
        )  # fmt: skip
        history = [*state.get("history", []), {"role": "user", "content": state["user_message"]},
                   {"role": "assistant", "content": state["reply"]}]  # fmt: skip
        return {"record": record, "history": history, "turn": state["turn"] + 1}

    async def next_step(state: EvalState) -> Literal["user", "__end__"]:  # async: no thread, see the generation graph
        return "user" if state["turn"] <= state["max_turns"] else END

    builder = StateGraph(EvalState)
    for name, node in (("user", user), ("model", model), ("score", score)):
        builder.add_node(name, node)
    builder.add_edge(START, "user")
    builder.add_edge("user", "model")
    builder.add_edge("model", "score")
    builder.add_conditional_edges("score", next_step, {"user": "user", END: END})
    return builder.compile()


def build_eval_roles(config: EvalConfig, backends: BackendPool) -> EvalRoles:
    """Instantiate the roles of :meth:`EvalConfig.role_plan`."""
    roles = {name: build_role(backends, name, rc, answer=answer) for name, rc, _, answer in config.role_plan()}
    return EvalRoles(model=roles["model"], scorer=roles["judge"], user=roles.get("user"),
                     model_sees_persona=get_baseline(config.baseline).sees_persona,
                     second_scorer=roles.get("second_judge"))  # fmt: skip


class EvalStore:
    """Evaluation conversations in the store: the shared ``conversations`` table, per-turn scores in
    ``eval_turns``, and linear tree nodes so the tree viewer shows transcripts too."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.trees = TreeStore(store)

    def records(self, conversation_id: str) -> list[EvalTurnRecord]:
        """Saved turns, in order."""
        rows = self.store.db["eval_turns"].rows_where("conversation_id = ?", [conversation_id], order_by="turn")
        return [EvalTurnRecord.model_validate(self.store.contents.loads(r["record"])) for r in rows]

    def save_turn(self, record: EvalTurnRecord) -> None:
        """Persist one scored turn and its two tree nodes atomically."""
        cid, turn = record.conversation_id, record.turn
        parent = root_id(cid) if turn == 1 else f"{cid}/t{turn - 1}/reply"
        with self.store.transaction() as conn:
            row = {"conversation_id": cid, "turn": turn, "score": record.score.score,
                   "record": self.store.contents.dumps(record.model_dump(mode="json")),
                   "created_at": utcnow()}  # fmt: skip
            self.store.insert("eval_turns", row)
            user_id, reply_id = f"{cid}/t{turn}/user", f"{cid}/t{turn}/reply"
            user_data = {"calls": [c.model_dump() for c in record.user_calls]}
            reply_data = {"calls": [c.model_dump() for c in record.model_calls], "score": record.score.score,
                          "judge_raw": record.score.raw, "judge_retried": record.score.retried,
                          "prompt_hash": record.score.prompt_hash,
                          "judge_calls": [c.model_dump() for c in record.judge_calls]}  # fmt: skip
            for node_id, parent_id, role, text, data in (
                (user_id, parent, "user", record.user_message, user_data),
                (reply_id, user_id, "assistant", record.reply, reply_data),
            ):
                self.store.insert("tree_nodes", {"id": node_id, "conversation_id": cid, "parent_id": parent_id,
                                                    "turn": turn, "role": role, "text": text, "label": None,
                                                    "chosen": 1, "data": self.store.contents.dumps(data)})  # fmt: skip
            conn.execute("UPDATE conversations SET turns_done = ?, updated_at = ? WHERE id = ?", [turn, utcnow(), cid])

    def scores(self, run_id: str) -> dict[str, dict[int, float | None]]:
        """scores[persona pair id][turn] for a run (None: unscored)."""
        out: dict[str, dict[int, float | None]] = {}
        for conversation in self.trees.conversations(run_id):
            by_turn = out.setdefault(conversation.persona.id, {})
            for row in self.store.db["eval_turns"].rows_where("conversation_id = ?", [conversation.id]):
                by_turn[row["turn"]] = row["score"]
        return out

    def second_scores(self, run_id: str) -> dict[str, dict[int, float | None]]:
        """The second judge's scores[persona pair id][turn] (empty when the run had none)."""
        rows = self.store.db.execute(
            "SELECT c.persona, e.turn, json_extract(e.record, '$.second_score.score'), "
            "json_extract(e.record, '$.second_score') IS NOT NULL FROM eval_turns e "
            "JOIN conversations c ON c.id = e.conversation_id WHERE c.run_id = ?", [run_id]
        ).fetchall()  # fmt: skip
        out: dict[str, dict[int, float | None]] = {}
        for persona, turn, score, present in rows:
            if present:
                out.setdefault(PersonaPair.model_validate_json(persona).id, {})[turn] = score
        return out

    def option_shares(self, run_id: str) -> list[float]:
        """Per reply scored in ``expected`` mode, the five options' share of the judge's first-token probability."""
        rows = self.store.db.execute(
            "SELECT json_extract(e.record, '$.score.option_share') FROM eval_turns e "
            "JOIN conversations c ON c.id = e.conversation_id WHERE c.run_id = ? "
            "AND json_extract(e.record, '$.score.option_share') IS NOT NULL", [run_id]
        ).fetchall()  # fmt: skip
        return [float(share) for (share,) in rows]

    def score_modes(self, run_id: str) -> list[str]:
        """How the run's scores were read (``text``, ``expected``), from its saved turns."""
        rows = self.store.db.execute(
            "SELECT DISTINCT json_extract(e.record, '$.score.mode') FROM eval_turns e "
            "JOIN conversations c ON c.id = e.conversation_id WHERE c.run_id = ?", [run_id]
        ).fetchall()  # fmt: skip
        return sorted(mode for (mode,) in rows if mode)


def replay_source(store: Store, run_id: str) -> list[tuple[PersonaPair, list[str]]]:
    """Personas and continued-path user turns of a stored run (simulation or evaluation)."""
    trees, evals = TreeStore(store), EvalStore(store)
    conversations = trees.conversations(run_id)
    if not conversations:
        raise AloeError(f"replay run {run_id!r} has no conversations in {store.path}")
    out = []
    for c in conversations:
        if c.kind == "simulation":
            users = [r.user_message for r in trees.records(c.id)]
        else:
            users = [r.user_message for r in evals.records(c.id)]
        if users:
            out.append((c.persona, users))
    return out


@dataclass
class EvalPlan:
    """What an evaluation run will hold, read before anything is written: personas, turns, replayed user turns."""

    personas: list[PersonaPair]
    turns: int | list[int]
    replayed: list[list[str]] | None = None


def plan_eval_conversations(store: Store, config: EvalConfig) -> EvalPlan:
    """Read the eval set (or the replay run) for ``config``; bad input fails here, before any run row."""
    if config.mode == "replay":
        if not config.replay_run:
            raise AloeError("replay mode needs --replay-run RUN (a run whose trees supply the user turns)")
        source = replay_source(store, config.replay_run)[: config.personas]
        users = [u[: config.turns] for _, u in source]
        return EvalPlan([p for p, _ in source], [len(u) for u in users], users)  # each keeps its own length
    if config.replay_run:  # a live run would ignore it, and the user would be the simulator, not the replay
        raise AloeError(f"replay run {config.replay_run} (--replay-run or [evaluation] replay_run) is for --mode "
                        "replay; this run is live")  # fmt: skip
    return EvalPlan(load_eval_personas(config.eval_set)[: config.personas], config.turns)


def create_eval_conversations(
    store: Store, run_id: str, config: EvalConfig, plan: EvalPlan | None = None
) -> dict[str, list[str]]:
    """Add the run's conversations; returns replayed user turns by conversation id (empty in live mode)."""
    plan = plan or plan_eval_conversations(store, config)
    ids = TreeStore(store).create_conversations(run_id, plan.personas, plan.turns, kind="evaluation")
    return dict(zip(ids, plan.replayed, strict=True)) if plan.replayed is not None else {}


@dataclass
class EvalSummary:
    """How an evaluation run ended."""

    run_id: str
    statuses: dict[str, int]
    turns_saved: int = 0
    unscored: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether every conversation is complete."""
        return set(self.statuses) <= {"complete"}


async def run_evaluation(
    store: Store, backends: BackendPool, config: EvalConfig, run_id: str, replayed: dict[str, list[str]] | None = None,
    on_turn: Any = None, on_done: Any = None,
) -> EvalSummary:  # fmt: skip
    """Continue every unfinished evaluation conversation of ``run_id``; scores are saved per turn."""
    evals = EvalStore(store)
    graph = build_eval_graph(build_eval_roles(config, backends))
    summary = EvalSummary(run_id, {})
    if config.mode == "replay" and not replayed:  # resuming: rebuild the mapping the run was created with
        source = replay_source(store, config.replay_run)
        replayed = {c.id: users for c, (_, users) in zip(evals.trees.conversations(run_id), source, strict=False)}

    async def advance(conversation: Conversation) -> None:
        done = evals.records(conversation.id)
        if len(done) >= conversation.max_turns:
            return
        history: list[Message] = []
        for r in done:
            history += [{"role": "user", "content": r.user_message}, {"role": "assistant", "content": r.reply}]
        state = EvalState(conversation_id=conversation.id, conversation_index=conversation.position,
                          persona=conversation.persona, seed=config.seed,
                          turn=len(done) + 1, max_turns=conversation.max_turns, history=history,
                          replay_user_messages=(replayed or {}).get(conversation.id))  # fmt: skip
        limit = {"recursion_limit": 10 + 4 * conversation.max_turns}
        async for update in graph.astream(state, stream_mode="updates", config=limit):
            if "score" in update:
                record = update["score"]["record"]
                evals.save_turn(record)
                summary.turns_saved += 1
                summary.unscored += record.score.score is None
                if on_turn:
                    on_turn(conversation.id, record.turn)

    summary.failures = await drive_conversations(evals.trees, run_id, config.concurrency, advance, on_done)
    summary.statuses = evals.trees.status_counts(run_id)
    return summary
