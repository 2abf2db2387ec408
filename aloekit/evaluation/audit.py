"""Judge audit: measure a judge on known-answer probes before anyone trusts its numbers.

For each eval persona P, a generator writes replies to P's opening message: one written for P, one
written for another persona Q, and one written for nobody (generic). The reply written for P is the
known answer of two probes: P's reply versus Q's, and P's reply versus the generic one.

- A preference judge (``--stage simulate``) sees each probe twice, in both orders. Every verdict is a
  trial: correct when it picks P's reply. The position-flip rate is the share of probes whose two
  verdicts picked different replies (a judge that always answers "Message 1" flips every time).
- A scorer (``--stage eval``) scores the two replies of a probe separately: correct when P's reply gets
  the strictly higher score (ties are counted, and are not correct).

Accuracy comes with a 95% Wilson interval over personas (a persona's trials share one right reply, so
they are not independent: counting personas, not trials, keeps the interval honest); the judge passes
when the interval's lower end is above chance (0.5). Invalid verdicts and unscored replies count as not
correct, and are reported. A ``both_orders`` judge asks both orders in one verdict: there the flip rate
is its own disagreement between the two orders.
With ``labels`` (JSONL of human or reference preferences) the audit also reports agreement with them:
accuracy and Cohen's kappa (scikit-learn).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from aloekit.agents.backends import BackendPool
from aloekit.agents.base import RoleView, get_role_factory
from aloekit.agents.judge import INVALID, Verdict
from aloekit.agents.scorer import Score
from aloekit.config import GenerationOptions, Settings, read_text_file
from aloekit.errors import AloeError, ConfigError
from aloekit.evaluation.task import BUILTIN_EVAL_SET, EvalConfig, load_eval_personas
from aloekit.graphs.simulate import (
    MAX_CONCURRENCY,
    RoleConfig,
    SimulationConfig,
    build_role,
    check_role,
    offered_options,
)
from aloekit.limits import SQLITE_INT_MAX, SQLITE_INT_MIN
from aloekit.personas.models import Persona, PersonaPair
from aloekit.store import Store, utcnow

Stage = Literal["simulate", "eval"]
ProbeKind = Literal["other_persona", "generic"]
CHANCE = 0.5


def calls_model(kind: str) -> bool:
    """Whether a role kind calls its backend (a kind says otherwise with ``calls_model = False``); a kind
    not registered in this process is assumed to."""
    try:
        return getattr(get_role_factory(kind), "calls_model", True) is not False
    except ConfigError:
        return True


def judge_files(judge: RoleConfig, files: Mapping[str, str]) -> str | None:
    """Which files ``judge`` answers with, given those of each in-process spec (``BackendPool.files``, or a
    run's ``hardware.files``): None for a server, or a judge calling no model."""
    return files.get(judge.backend) if calls_model(judge.kind) else None


def judge_key(stage: Stage, judge: RoleConfig, paper_exact: bool = False, both_orders: bool = False) -> str:
    """Identity of a judge as configured: stage, kind, backend, options, generation, and for a simulation
    judge ``paper_exact`` and ``both_orders`` (which changes its verdicts: both orders' answers combined)."""
    identity = {"stage": stage, **judge.model_dump(mode="json"), "paper_exact": paper_exact,
                "both_orders": both_orders}  # fmt: skip
    if not calls_model(judge.kind):
        # A judge that calls no model (persona_similarity) is the same judge on any backend and generation.
        identity.pop("backend"), identity.pop("generation")
    if stage == "eval":
        # A scorer without a score_mode option used to read text scores; it now reads them by the backend
        # ("auto"). Marking the key keeps audits made under the old default from vouching for the new one.
        identity["score_mode_default"] = "auto"
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class AuditConfig(Settings):
    """Settings of one ``aloe judge audit``."""

    stage: Stage
    """``simulate``: the preference judge of ``aloe simulate``; ``eval``: the 1-5 scorer of ``aloe eval``."""
    judge: RoleConfig
    """The judge exactly as that stage would build it."""
    paper_exact: bool = False
    """Simulation judges: the authors' judge."""
    both_orders: bool = False
    """Simulation judges: each verdict asks both orders (``judge_both_orders``), as ``aloe simulate`` would."""
    user: RoleConfig = RoleConfig(kind="user_simulator", generation=GenerationOptions(max_tokens=64, temperature=0.8))
    """Writes each persona's opening message."""
    generator: RoleConfig = RoleConfig(
        kind="model_under_test", generation=GenerationOptions(max_tokens=96, temperature=0.7)
    )
    """Writes the probe replies: for the persona (told it), for another persona, and for nobody."""
    eval_set: str = BUILTIN_EVAL_SET
    """Personas of the probes: ``builtin`` or a folder with the paper's two files."""
    personas: int | None = Field(default=20, ge=2)
    """Probe N eval personas (two probes each; no two neighbours share a profile or personality); None: all."""
    seed: int = Field(default=0, ge=SQLITE_INT_MIN, le=SQLITE_INT_MAX)
    """Seeds every sampled call (the bounds of the stage's own seed)."""
    concurrency: int = Field(default=8, gt=0, le=MAX_CONCURRENCY)
    """Personas probed at once."""


@dataclass
class Probe:
    """Two replies to one user message, one of them known to be the better one for ``persona``."""

    index: int
    persona: PersonaPair
    kind: ProbeKind
    user_message: str
    right: str
    wrong: str


@dataclass
class AuditResult:
    """What an audit measured (rates are None when there was nothing to measure)."""

    stage: Stage
    judge_key: str
    judge: dict[str, Any]
    eval_set: str
    personas: int
    probes: int
    trials: int
    correct: int
    invalid: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    invalid_rate: float | None
    flip_rate: float | None
    """Preference judges: share of probes (both orders valid) whose two verdicts picked different replies."""
    tie_rate: float | None
    """Scorers: share of probes whose two replies got the same score."""
    by_kind: dict[str, dict[str, int]]
    labels: dict[str, Any] | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    judge_files: str | None = None
    """Which files an in-process judge answered with (``BackendPool.files``): the audit vouches for
    those only. None for a server's judge, and for audits made before it was recorded."""

    @property
    def passed(self) -> bool:
        """Whether accuracy is above chance with 95% confidence."""
        return self.ci_low is not None and self.ci_low > CHANCE

    def summary_line(self) -> str:
        """One line: verdict, accuracy with CI, flip/tie and invalid rates."""
        if self.accuracy is None:
            return "no trials"
        extra = f"position flips {_pct(self.flip_rate)}" if self.stage == "simulate" else f"ties {_pct(self.tie_rate)}"
        return (
            f"{'passed' if self.passed else 'FAILED'}: accuracy {_pct(self.accuracy)} "
            f"[95% CI {_pct(self.ci_low)}-{_pct(self.ci_high)}] on {self.trials} trials, {extra}, "
            f"invalid {_pct(self.invalid_rate)}"
        )

    def plain_words(self) -> str:
        """What the audit means for the numbers this judge produces, in a sentence or two."""
        if self.accuracy is None:
            return "The audit ran no trials, so nothing is known about this judge."
        what = "picked the reply written for the persona" if self.stage == "simulate" else (
            "scored the reply written for the persona higher"
        )  # fmt: skip
        said = (
            f"On {self.trials} known-answer trials ({self.personas} personas) the judge {what} "
            f"{_pct(self.accuracy)} of the time (95% CI {_pct(self.ci_low)}-{_pct(self.ci_high)}; chance is 50%)."
        )
        output = "labels" if self.stage == "simulate" else "scores"
        if self.passed:
            return said + f" That is better than chance: its {output} carry real signal about tailoring."
        return said + (
            " The interval includes chance: the audit cannot show that this judge tells a tailored reply from "
            f"an untailored one, so its {output} are unverified and differences between runs it "
            f"{'labelled' if self.stage == 'simulate' else 'scored'} are not evidence."
        )


def audit_config(stage: Stage, section: dict[str, Any], roles: dict[str, str], **settings: Any) -> AuditConfig:
    """The audit of the judge a stage's config section (``[evaluation]`` or ``[simulation]``) builds.

    ``roles`` sets backends (``judge``, ``user``, ``generator``); the generator defaults to the judge's. A
    section that does not validate raises pydantic's ValidationError, for the caller to name where it came from.
    """
    from pydantic import ValidationError

    if stage == "eval":
        resolved: Any = EvalConfig.resolve({"model": ""}, section)
    else:
        resolved = SimulationConfig.resolve(section)
    try:
        judge = resolved.judge.model_copy(update={"backend": roles.get("judge", resolved.judge.backend)})
        user = resolved.user.model_copy(update={"backend": roles.get("user", resolved.user.backend)})
        generator = AuditConfig.model_fields["generator"].default.model_copy(
            update={"backend": roles.get("generator", judge.backend)}
        )
        fields = {"paper_exact": getattr(resolved, "paper_exact", False),
                  "both_orders": getattr(resolved, "judge_both_orders", False)}  # fmt: skip
        fields |= {k: v for k, v in settings.items() if v is not None}
        return AuditConfig(stage=stage, judge=judge, user=user, generator=generator, **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise AloeError(f"judge audit: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.0%}"


def wilson_interval(accuracy: float, n: int) -> tuple[float | None, float | None]:
    """95% Wilson score interval for a proportion ``accuracy`` observed on ``n`` independent units.

    Written out rather than taken from scipy's ``binomtest``, which needs whole counts: the audit's
    units are personas, each contributing the share of its trials the judge got right.
    """
    if n == 0:
        return None, None
    from scipy.stats import norm

    z = float(norm.ppf(0.975))
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _other(personas: list[PersonaPair], i: int) -> PersonaPair:
    """Another eval persona with a different profile and personality (the same one if there is none)."""
    n = len(personas)
    for step in range(1, n):
        q = personas[(i + step) % n]
        if q.profile.id != personas[i].profile.id and q.personality.id != personas[i].personality.id:
            return q
    raise AloeError("the judge audit needs at least two eval personas with different profiles and personalities")


async def build_probes(config: AuditConfig, backends: BackendPool, personas: list[PersonaPair]) -> list[Probe]:
    """Ask the user simulator for each persona's opening message and the generator for the three replies."""
    user = build_role(backends, "audit_user", config.user, answer="text")
    tailored = build_role(backends, "audit_generator", config.generator, answer="text", oracle=True)
    generic = build_role(backends, "audit_generator", config.generator, answer="text")
    gate = asyncio.Semaphore(config.concurrency)

    async def probe(i: int, persona: PersonaPair) -> list[Probe]:
        async with gate:
            base = RoleView(conversation_id=f"audit-{i}", turn=1, persona=persona, seed=config.seed,
                            conversation_index=i)  # fmt: skip
            message = (await user(base)).text
            asked = RoleView(conversation_id=base.conversation_id, turn=1, user_message=message, seed=config.seed,
                             conversation_index=i)  # fmt: skip
            other_persona = _other(personas, i)
            right, other, plain = await asyncio.gather(
                tailored(replace(asked, persona=persona)),
                tailored(replace(asked, persona=other_persona)),
                generic(asked),
            )
            return [
                Probe(2 * i, persona, "other_persona", message, right.text, other.text),
                Probe(2 * i + 1, persona, "generic", message, right.text, plain.text),
            ]

    batches = await asyncio.gather(*(probe(i, p) for i, p in enumerate(personas)))
    return [p for batch in batches for p in batch]


def _judge_view(probe: Probe, candidates: tuple[str, ...], hinted: tuple[bool, ...], seed: int) -> RoleView:
    # Both orders share the index, so the judge's own shuffle is the same permutation: the orders are reversed.
    return RoleView(conversation_id=f"audit-probe-{probe.index}", turn=1, persona=probe.persona,
                    user_message=probe.user_message, candidates=candidates, hinted=hinted, seed=seed,
                    conversation_index=probe.index)  # fmt: skip


async def _judge_pair(judge: Any, probe: Probe, seed: int, both_orders: bool) -> dict[str, Any]:
    """Ask in both orders: the outcome of each verdict, and whether the two picked different replies.

    The first-shown candidate is the hinted one in both calls, so a ``paper_exact`` judge (hinted reply
    first) also sees the right reply first once and second once. A ``both_orders`` judge asks both orders
    itself: one call is one trial, and its own agreement between the orders gives the flip.
    """
    first = await _verdict(judge, _judge_view(probe, (probe.right, probe.wrong), (True, False), seed))
    if both_orders:
        valid = first.preferred != INVALID and first.agreement is not None
        return {"outcomes": [_outcome(first.preferred, 0)], "flipped": valid and first.agreement is False,
                "both_valid": valid, "raw": first.raw, "probabilities": [first.probabilities]}  # fmt: skip
    second = await _verdict(judge, _judge_view(probe, (probe.wrong, probe.right), (True, False), seed))
    outcomes = [_outcome(first.preferred, 0), _outcome(second.preferred, 1)]
    valid = INVALID not in (first.preferred, second.preferred)
    return {"outcomes": outcomes, "flipped": valid and first.preferred == second.preferred, "both_valid": valid,
            "raw": [*first.raw, *second.raw], "probabilities": [first.probabilities, second.probabilities]}  # fmt: skip


async def _verdict(judge: Any, view: RoleView) -> Verdict:
    value = (await judge(view)).value
    if not isinstance(value, Verdict):
        raise AloeError("the simulation judge must return a Verdict (use --stage eval for a scorer)")
    return value


def _outcome(preferred: int, right: int) -> str:
    return "invalid" if preferred == INVALID else "correct" if preferred == right else "wrong"


async def _score_pair(scorer: Any, probe: Probe, seed: int, both_orders: bool = False) -> dict[str, Any]:
    """Score both replies; correct when the right one scores strictly higher."""
    scores = []
    for reply in (probe.right, probe.wrong):
        value = (await scorer(_judge_view(probe, (reply,), (), seed))).value
        if not isinstance(value, Score):
            raise AloeError("the evaluation judge must return a Score (use --stage simulate for a preference judge)")
        scores.append(value.score)
    right, wrong = scores
    if right is None or wrong is None:
        outcome = "invalid"
    else:
        outcome = "correct" if right > wrong else "tie" if right == wrong else "wrong"
    return {"outcomes": [outcome], "scores": scores}


def _judge_keywords(config: AuditConfig) -> dict[str, Any]:
    """What the judge answers with at its stage, and the run-level keywords its kind takes."""
    offered = {"paper_exact": config.paper_exact, "both_orders": config.both_orders}
    extra = offered_options(
        "judge", config.judge, offered, {"paper_exact": "--paper-exact", "both_orders": "--judge-both-orders"}
    )
    return {"answer": "verdict" if config.stage == "simulate" else "score", **extra}


def check_audit_roles(config: AuditConfig) -> None:
    """Validate the judge, user and generator as the audit builds them, before its run row and any call."""
    check_role("judge", config.judge, **_judge_keywords(config))
    check_role("audit_user", config.user, answer="text")
    check_role("audit_generator", config.generator, answer="text", oracle=True)


def build_judge(config: AuditConfig, backends: BackendPool) -> Any:
    """The judge as its stage builds it (with ``both_orders``, each verdict already combines both orders)."""
    return build_role(backends, "judge", config.judge, **_judge_keywords(config))


async def run_audit(
    config: AuditConfig, backends: BackendPool, labels: list[dict[str, Any]] | None = None
) -> AuditResult:
    """Build the probes, put them to the judge, and measure it."""
    personas = load_eval_personas(config.eval_set)[: config.personas]
    if len(personas) < 2:
        raise AloeError("the judge audit needs at least two eval personas")
    probes = await build_probes(config, backends, personas)
    judge = build_judge(config, backends)
    gate = asyncio.Semaphore(config.concurrency)
    ask = _judge_pair if config.stage == "simulate" else _score_pair

    async def one(probe: Probe) -> dict[str, Any]:
        async with gate:
            return {"probe": probe.index, "kind": probe.kind, "persona": probe.persona.id,
                    "user_message": probe.user_message, "right": probe.right, "wrong": probe.wrong,
                    **await ask(judge, probe, config.seed, config.both_orders)}  # fmt: skip

    details = await asyncio.gather(*(one(p) for p in probes))
    outcomes = [o for d in details for o in d["outcomes"]]
    correct, invalid = outcomes.count("correct"), outcomes.count("invalid")
    accuracy = correct / len(outcomes) if outcomes else None
    # A persona's trials share one right reply and are not independent: the interval counts personas.
    low, high = wilson_interval(accuracy, len(personas)) if accuracy is not None else (None, None)
    by_kind: dict[str, dict[str, int]] = {}
    for d in details:
        entry = by_kind.setdefault(d["kind"], {"correct": 0, "trials": 0})
        entry["correct"] += d["outcomes"].count("correct")
        entry["trials"] += len(d["outcomes"])
    both_valid = [d for d in details if d.get("both_valid")]
    return AuditResult(
        stage=config.stage, judge_key=judge_key(config.stage, config.judge, config.paper_exact, config.both_orders),
        judge=config.judge.model_dump(mode="json") | {"paper_exact": config.paper_exact,
                                                      "both_orders": config.both_orders},
        eval_set=config.eval_set, personas=len(personas), probes=len(probes), trials=len(outcomes),
        correct=correct, invalid=invalid, accuracy=accuracy,
        ci_low=low, ci_high=high, invalid_rate=invalid / len(outcomes) if outcomes else None,
        flip_rate=(sum(d["flipped"] for d in both_valid) / len(both_valid)) if both_valid else None,
        tie_rate=outcomes.count("tie") / len(details) if config.stage == "eval" and details else None,
        by_kind=by_kind, labels=await _agreement(config, judge, labels) if labels else None, details=list(details),
        judge_files=judge_files(config.judge, backends.files([config.judge.backend])),
    )  # fmt: skip


# Reference labels --------------------------------------------------------------------------------------


def read_labels(path: Path) -> list[dict[str, Any]]:
    """Rows ``{"profile", "personality", "user_message", "replies": [a, b], "preferred": 0 or 1}``."""
    text = read_text_file(path, "labels file", AloeError)  # missing, a folder, not UTF-8: one line naming it
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AloeError(f"{where}: invalid JSON: {exc.msg}") from None
        except RecursionError:  # "[" * 100000: json recurses once per level
            raise AloeError(f"{where}: invalid JSON: nested too deeply") from None
        if not isinstance(row, dict):
            raise AloeError(f"{where}: expected an object")
        for name in ("profile", "personality", "user_message"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise AloeError(f"{where}: field '{name}' must be a non-empty string")
        replies = row.get("replies")
        if not isinstance(replies, list) or len(replies) != 2 or not all(isinstance(r, str) for r in replies):
            raise AloeError(f"{where}: field 'replies' must be a list of two strings")
        if row.get("preferred") not in (0, 1) or isinstance(row.get("preferred"), bool):
            raise AloeError(f"{where}: field 'preferred' must be 0 or 1")
        rows.append(row)
    if not rows:
        raise AloeError(f"labels file {path}: no rows")
    return rows


async def _agreement(config: AuditConfig, judge: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The judge's choice on each labelled pair against the label: accuracy and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    decisions = []
    for i, row in enumerate(rows):
        persona = PersonaPair(profile=Persona.new("profile", row["profile"]),
                              personality=Persona.new("personality", row["personality"]))  # fmt: skip
        probe = Probe(10_000 + i, persona, "other_persona", row["user_message"], *row["replies"])
        if config.stage == "simulate":
            value = (await judge(_judge_view(probe, tuple(row["replies"]), (True, False), config.seed))).value
            decisions.append(value.preferred)
        else:
            scores = [(await judge(_judge_view(probe, (r,), (), config.seed))).value.score for r in row["replies"]]
            valid = None not in scores and scores[0] != scores[1]
            decisions.append((0 if scores[0] > scores[1] else 1) if valid else INVALID)
    truth = [row["preferred"] for row in rows]
    kappa = float(cohen_kappa_score(truth, decisions, labels=[0, 1, INVALID]))
    accuracy = sum(d == t for d, t in zip(decisions, truth, strict=True)) / len(rows)
    return {"rows": len(rows), "accuracy": accuracy, "kappa": None if math.isnan(kappa) else kappa,
            "invalid": decisions.count(INVALID)}  # fmt: skip


# Storage ----------------------------------------------------------------------------------------------


def save_audit(store: Store, run_id: str, result: AuditResult) -> str:
    """Store an audit; returns its id: its run's id (which holds the run's start time) and its number there,
    so two same-seed audits differ only where their runs' ids do."""
    taken = {row[0] for row in store.conn.execute("SELECT id FROM judge_audits WHERE run_id = ?", [run_id])}
    audit_id = next(name for n in itertools.count(len(taken) + 1) if (name := f"audit-{run_id}-{n}") not in taken)
    store.insert("judge_audits", {
        "id": audit_id, "run_id": run_id, "judge_key": result.judge_key, "stage": result.stage,
        "judge": json.dumps(result.judge, sort_keys=True), "passed": int(result.passed), "accuracy": result.accuracy,
        "ci_low": result.ci_low, "ci_high": result.ci_high, "result": json.dumps(asdict(result)),
        "created_at": utcnow(),
    })  # fmt: skip
    return audit_id


def _row_to_result(row: dict[str, Any]) -> tuple[str, AuditResult]:
    return row["id"], AuditResult(**json.loads(row["result"]))


def get_audit(store: Store, audit_id: str) -> AuditResult | None:
    """A stored audit by id."""
    rows = list(store.db["judge_audits"].rows_where("id = ?", [audit_id]))
    return _row_to_result(rows[0])[1] if rows else None


def latest_audit(store: Store, key: str, files: str | None = None) -> tuple[str, AuditResult] | None:
    """The newest audit of the judge with identity ``key`` answering with ``files`` (an audit of a model since
    retrained or replaced does not vouch for it; one made before files were recorded does, and any does when
    ``files`` is not known), as (id, result)."""
    recorded = "json_extract(result, '$.judge_files')"
    where = f"judge_key = ? AND json_valid(result) AND (? IS NULL OR {recorded} IS NULL OR {recorded} = ?)"
    rows = list(store.db["judge_audits"].rows_where(where, [key, files, files], order_by="created_at DESC",
                                                    limit=1))  # fmt: skip
    return _row_to_result(rows[0]) if rows else None


@dataclass
class AuditNotice:
    """What a run should tell its user about its judge before it starts."""

    audit_id: str | None
    text: str
    warning: bool


def config_judge_kind(stage: Stage, section: dict[str, Any]) -> str:
    """The judge kind ``aloe judge audit --stage STAGE`` builds from the config's ``section`` (``[evaluation]`` or
    ``[simulation]``): its ``judge.kind``, else the stage's default."""
    judge = section.get("judge")
    default = (EvalConfig.model_fields if stage == "eval" else SimulationConfig.model_fields)["judge"].default
    return str(judge["kind"]) if isinstance(judge, dict) and "kind" in judge else default.kind


def audit_notice(
    store: Store,
    backends: BackendPool,
    stage: Stage,
    judge: RoleConfig,
    paper_exact: bool = False,
    both_orders: bool = False,
    audited_kind: str | None = None,
) -> AuditNotice:
    """The line a run prints about the judge it is about to use, from ``backends``: a warning unless it passed
    an audit (of the same files, for an in-process judge). ``audited_kind``: for a judge that is not the
    config's own (GRPO's), the kind ``aloe judge audit`` would build from the config (:func:`config_judge_kind`);
    where it differs, the warning says which kind to set there."""
    key = judge_key(stage, judge, paper_exact, both_orders)
    found = latest_audit(store, key, judge_files(judge, backends.files([judge.backend])))
    if found is None:
        what = "labels" if stage == "simulate" else "scores"
        flags = "".join(f" --{name}" for name, on in (("paper-exact", paper_exact), ("judge-both-orders", both_orders))
                        if on)  # fmt: skip
        # Audits of the same judge on other files: it was retrained or replaced since.
        none = "no audit of its current files" if store.db["judge_audits"].count_where("judge_key = ?", [key]) else (
            "no audit"
        )  # fmt: skip
        section = "evaluation" if stage == "eval" else "simulation"
        # The audit builds the judge from the config's [section.judge]: another kind must be set there.
        other = audited_kind is not None and judge.kind != audited_kind
        kind = f', with [{section}.judge] kind = "{judge.kind}" in --config' if other else ""
        text = (
            f"warning: judge {judge.backend} ({judge.kind}) has {none} in {store.path}, so its {what} are "
            f"unverified (run: aloe judge audit --stage {stage}{flags} --role judge={judge.backend}{kind})"
        )
        return AuditNotice(None, text, warning=True)
    audit_id, result = found
    prefix = "" if result.passed else "warning: "
    text = f"{prefix}judge {judge.backend} ({judge.kind}) audit {audit_id} {result.summary_line()}"
    return AuditNotice(audit_id, text, warning=not result.passed)
