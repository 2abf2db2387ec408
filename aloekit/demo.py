"""``aloe demo``: the whole ALOE pipeline on the embedded SmolLM2, offline, in one go.

personas -> judge audits -> simulated trees -> SFT/DPO data -> LoRA SFT then DPO -> online GRPO against the
simulated user -> evaluation of base, DPO and GRPO models -> report, methods table, plot and an HTML tree.
Every stage writes to ``OUT/aloe.db`` (open it with ``aloe view --db OUT/aloe.db``) and its files under ``OUT``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig, GenerationOptions
from aloekit.cpu_thread import run_on_cpu_thread
from aloekit.errors import run_async
from aloekit.evaluation import EvalConfig, create_eval_conversations, run_evaluation, write_report
from aloekit.evaluation.audit import AuditConfig, AuditResult, run_audit, save_audit
from aloekit.evaluation.report import format_value, iv, methods_table_lines, run_results
from aloekit.evaluation.task import eval_persona_ids
from aloekit.graphs import RoleConfig, SimulationConfig, TreeStore, run_conversations
from aloekit.personas import GenerationConfig, PersonaPool, generate_personas, get_embedder
from aloekit.store import Store, run_end_state
from aloekit.training import build_train_config, dpo_rows, sft_rows, train
from aloekit.training.grpo import GRPOSettings, build_environments, train_grpo, training_personas
from aloekit.training.progress import StepReporter, StopWhenSet

T = TypeVar("T")
MODEL = "local:smollm2"
HONESTY_NOTE = (
    "Demo scale: every role (user simulator, inducer, responders, judge) and the model under test is "
    "SmolLM2-135M-Instruct, a 135M-parameter model judging itself, trained for a few dozen steps on a few "
    "dozen pairs. These numbers show that the pipeline runs end to end; they are not a research result."
)

STAGES = 8
AUDITED = {
    "simulate": "preference judge (labels the training pairs)",
    "eval": "scorer (scores the evaluation)",
    "reward": "persona_similarity (GRPO's reward, the evaluation's second judge)",
}
"""The demo's judges, in the order of :func:`audit_configs`."""


@dataclass(frozen=True)
class DemoScale:
    """How much work each stage does."""

    new_profiles: int
    persona_rounds: int
    conversations: int
    turns: int
    sft_steps: int
    dpo_steps: int
    eval_personas: int
    eval_turns: int
    audit_personas: int
    grpo_personas: int
    grpo_turns: int
    grpo_group: int
    grpo_steps: int


# What CI runs: every stage once, as small as still shows it working. On the 2-core development machine the
# previous quick scale (12 x 3 simulated turns, 6 SFT + 8 DPO steps, 4 audit and evaluation personas, 2 GRPO
# users) took 14.2 minutes idle, over half of `make test`'s CPU time, and this one 11.1: the simulation costs
# about what its prompts do (prefill, linear in conversations), a DPO step 13 s, while the evaluation costs
# what its turns do one after another, whatever the number of personas.
QUICK = DemoScale(
    new_profiles=3,
    persona_rounds=1,
    conversations=8,
    turns=3,
    sft_steps=2,
    dpo_steps=2,
    eval_personas=3,
    eval_turns=3,
    audit_personas=3,
    grpo_personas=1,
    grpo_turns=2,
    grpo_group=2,
    grpo_steps=2,
)
# Room for the GRPO stage (about 30 s a step on 2 cores) and its evaluation, measured: 24 x 4 simulated
# turns took 16 minutes and 30 + 40 SFT/DPO steps 9, so fewer of both than the first release's default, and
# fewer persona rounds and audit probes. 20 evaluation personas (the whole run took 32.3 minutes), since on
# 10 the paired interval of GRPO's measured +0.37 on persona_similarity still reached below zero.
FULL = DemoScale(
    new_profiles=10,
    persona_rounds=4,
    conversations=16,
    turns=4,
    sft_steps=16,
    dpo_steps=24,
    eval_personas=20,
    eval_turns=4,
    audit_personas=8,
    grpo_personas=2,
    grpo_turns=3,
    grpo_group=4,
    grpo_steps=12,
)


# Small models loop on greedy decoding ("I'm sure I'm sure..."): the demo sets a mild penalty on every
# generating role, and on the model under test (base and trained alike), where it is recorded.
PENALTY = 1.15
# SmolLM2-135M rarely writes a valid verdict or a bare digit when asked: the demo's judges answer with a
# constrained label and are read as probabilities (expected scores), so every turn gets a value.
PREFERENCE_JUDGE = RoleConfig(
    kind="preference_judge",
    backend=MODEL,
    options={"labels": "letters", "score_mode": "expected"},
    generation=GenerationOptions(max_tokens=1, temperature=0),
)
SCORER = RoleConfig(
    kind="alignment_scorer",
    backend=MODEL,
    options={"score_mode": "expected"},
    generation=GenerationOptions(max_tokens=1, temperature=0),
)
# SmolLM2 ignores the default prompt's "reveal a little": its messages were no closer to its persona than a
# generic reply (persona_similarity 3.21 against the base model's replies' 3.24 on 10 eval personas x 4
# turns), which leaves nothing to infer or adapt to. Asked for one concrete detail per message, it reveals
# something (3.56; first messages 3.63 -> 4.19), still never the whole profile.
USER_PROMPT = """You are a real person chatting with a friend. Stay in character.

Who you are:
Profile: {profile}
Personality: {personality}

Write only your next message, one or two casual sentences. Each message mentions one concrete thing from \
your profile (your job, family, home or hobbies), said in your own way. Never list your facts."""
USER = RoleConfig(
    kind="user_simulator",
    backend=MODEL,
    options={"system_prompt": USER_PROMPT},
    generation=GenerationOptions(max_tokens=32, temperature=0.8, repetition_penalty=PENALTY),
)
# The GRPO reward and the evaluation's second judge: embeddings, no model call, so it can be trusted where
# the 135M model cannot judge (it measures topical tailoring, not style).
SIMILARITY = RoleConfig(kind="persona_similarity", backend=MODEL)
GENERATOR = RoleConfig(
    kind="model_under_test",
    backend=MODEL,
    generation=GenerationOptions(max_tokens=40, temperature=0.7, repetition_penalty=PENALTY),
)


REPLY_TOKENS = 48
"""Longest reply of the model under test: in evaluation and in GRPO's sampled groups alike."""


def simulation_config(scale: DemoScale) -> SimulationConfig:
    """Small token limits, the penalty on every generating role, and the expected-mode letter judge."""
    short = {"max_tokens": 40, "temperature": 0.7, "repetition_penalty": PENALTY}
    return SimulationConfig.model_validate(
        {
            "conversations": scale.conversations,
            "turns": scale.turns,
            "concurrency": scale.conversations,
            "user": USER.model_dump(),
            "inducer": {
                "kind": "inducer",
                "generation": {"max_tokens": 40, "temperature": 0, "repetition_penalty": PENALTY},
            },
            "responders": [
                {"name": "preferred", "kind": "responder", "use_hint": True, "generation": short},
                {"name": "plain", "kind": "responder", "use_hint": False, "generation": short},
            ],
            "judge": PREFERENCE_JUDGE.model_dump(),
            # Expected mode averages P(candidate) over both orders: a constant position bias cancels out.
            "judge_both_orders": True,
        }
    ).with_backend("all", MODEL)


def eval_config(model: str, scale: DemoScale) -> EvalConfig:
    """Live mode on the built-in eval set; user and judge stay the base model, seeded alike for both runs."""
    return EvalConfig(
        model=model,
        personas=scale.eval_personas,
        turns=scale.eval_turns,
        concurrency=scale.eval_personas,
        seed=0,
        user=USER.model_copy(update={"generation": USER.generation.merged({"max_tokens": 40, "seed": 7})}),
        judge=SCORER,
        second_judge=SIMILARITY,
        model_generation=GenerationOptions(max_tokens=REPLY_TOKENS, temperature=0, repetition_penalty=PENALTY),
    )


def audit_configs(scale: DemoScale) -> list[AuditConfig]:
    """Audits of the demo's two judges, on the built-in eval personas."""
    common = {"user": USER, "generator": GENERATOR, "personas": scale.audit_personas, "concurrency": 8}
    return [
        AuditConfig(stage="simulate", judge=PREFERENCE_JUDGE, both_orders=True, **common),
        AuditConfig(stage="eval", judge=SCORER, **common),
        AuditConfig(stage="eval", judge=SIMILARITY, **common),
    ]


def grpo_settings(scale: DemoScale, out: Path, init_adapter: Path) -> GRPOSettings:
    """GRPO from the DPO adapter, rewarded by persona_similarity, replies as long as the evaluation's."""
    return GRPOSettings(
        base=MODEL,
        out=out,
        personas=scale.grpo_personas,
        turns=scale.grpo_turns,
        group=scale.grpo_group,
        max_steps=scale.grpo_steps,
        init_adapter=init_adapter,
        overwrite=True,
        max_completion_length=REPLY_TOKENS,
        user=USER,
        judge=SIMILARITY,
        # SmolLM2's samples at temperature 1 are mostly word salad: the demo samples as its generator does.
        temperature=0.7,
        # A dozen steps must move a LoRA: a higher learning rate than trl's default, held constant (a linear
        # decay halves it on average), no KL term.
        trl={"learning_rate": 2e-4, "lr_scheduler_type": "constant", "beta": 0.0, "repetition_penalty": PENALTY},
    )


def run_grpo(store: Store, config: AloeConfig, settings: GRPOSettings, run_id: str, audit_id: str,
             progress: list[Any]) -> dict[str, Any]:  # fmt: skip
    """The GRPO stage, in its own thread: its own backends, bound to the rollout's event loop."""
    pool = PersonaPool(store)
    backends = BackendPool(config, store=store, run_id=run_id)
    envs = build_environments(settings, backends, TreeStore(store), run_id)
    personas = training_personas(pool, settings, settings.conversations)
    return train_grpo(settings, envs, personas, callbacks=progress, backends=backends,
                      extra_summary={"run_id": run_id, "judge_audit": audit_id})  # fmt: skip


async def train_on_cpu_thread(stop: threading.Event, function: Callable[..., T], *args: Any) -> T:
    """Run a training stage on the CPU thread (:mod:`aloekit.cpu_thread`, where the demo's models generate)
    with a :class:`StopWhenSet` on ``stop`` in its trainer: cancelled (Ctrl-C, SIGTERM), it stops after its
    current step instead of holding the process until it would have finished (the process waits for the
    thread before it exits)."""
    try:
        return await run_on_cpu_thread(function, *args)
    except BaseException:
        stop.set()
        raise


def _count(n: int, noun: str) -> str:
    """``1 conversation``, ``2 conversations``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


async def _run_demo(out: Path, scale: DemoScale, say: Callable[[str], None]) -> dict[str, Any]:
    store = Store(out / "aloe.db")
    # One batch holds every call of a step, both responders of every conversation included (24 rows cost far
    # less than two batches of 12 on a CPU).
    config = AloeConfig(db=out / "aloe.db", backend={"max_batch_size": 24, "max_concurrency": 24, "timeout_s": 600})
    demo_run = store.start_run("aloe demo", {"scale": scale.__dict__}, 0)  # every model call is logged under it
    backends = BackendPool(config, store=store, run_id=demo_run)
    trees = TreeStore(store)
    stage_started: list[float] = []
    stage_minutes: list[float] = []

    def stage(name: str) -> None:
        now = time.monotonic()
        if stage_started:
            stage_minutes.append(round((now - stage_started[-1]) / 60, 1))
            say(f"      ({stage_minutes[-1]} min)")
        stage_started.append(now)
        say(f"[{len(stage_started)}/{STAGES}] {name}")

    stage("persona pool: shipped seeds, grown by SmolLM2 self-generation")
    pool = PersonaPool(store)
    pool.ensure_seeds("personality")
    growth = GenerationConfig(
        kind="profile",
        target=20 + scale.new_profiles,
        candidates_per_round=5,
        max_rounds=scale.persona_rounds,
        threshold=0.8,
        max_tokens=400,
        saturation_rounds=2,
        repetition_penalty=PENALTY,
    )
    # MiniLM rates same-style profiles ~0.65-0.7 alike, so the paper's 0.6 would keep almost nothing here.
    grown = await generate_personas(
        pool,
        backends.client(MODEL, role="persona_generator"),
        get_embedder("minilm"),
        growth,
        source=f"generated:{MODEL}",
    )
    say(f"      profiles {grown.start_size} -> {grown.final_size} ({grown.stop_reason}); 20 personalities")

    stage(f"judge audits: known-answer probes from {scale.audit_personas} eval personas")
    audits: dict[str, tuple[str, AuditResult]] = {}
    for (key, name), audit_config in zip(AUDITED.items(), audit_configs(scale), strict=True):
        result = await run_audit(audit_config, backends)
        audits[key] = (save_audit(store, demo_run, result), result)
        say(f"      {name}: {result.summary_line()}")
        say(f"      {result.plain_words()}")

    stage(f"simulation: {scale.conversations} conversations x {scale.turns} turns, five roles on {MODEL}")
    sim = simulation_config(scale)
    sim_config = {"simulation_resolved": sim.model_dump(mode="json"), "judge_audit": audits["simulate"][0]}
    sim_run = store.start_run("aloe demo: simulate", sim_config, sim.seed)
    held_out = eval_persona_ids(sim.eval_set)
    trees.create_conversations(sim_run, pool.sample_pairs(sim.conversations, seed=sim.seed, exclude=held_out),
                               sim.turns)  # fmt: skip
    turns_done = 0

    def on_turn(cid: str, turn: int) -> None:
        nonlocal turns_done
        turns_done += 1
        if turns_done % 10 == 0:
            say(f"      {turns_done}/{scale.conversations * scale.turns} turns")

    summary = await run_conversations(trees, backends, sim, sim_run, on_turn=on_turn)
    store.finish_run(sim_run, "completed" if summary.finished else "incomplete")
    say(
        f"      {summary.turns_saved} turns, {summary.unlabelled_turns} without a valid verdict, "
        f"statuses {summary.statuses}"
    )

    stage("export: SFT and DPO data")
    conversations = trees.conversations(sim_run)
    keys = trees.export_keys(conversations)
    records = {keys[c.id]: trees.records(c.id) for c in conversations}
    data = out / "data"
    data.mkdir(exist_ok=True)
    sft, dpo = sft_rows(records), dpo_rows(records)
    _write_jsonl(sft, data / "sft.jsonl")
    _write_jsonl(dpo, data / "dpo.jsonl")
    say(f"      {len(sft)} SFT turns (prompt = the path actually taken), {len(dpo)} DPO pairs in {data}")

    stage(f"training: LoRA SFT ({scale.sft_steps} steps) then DPO ({scale.dpo_steps} steps)")
    adapters = out / "adapters"

    stop = threading.Event()

    def progress() -> list[Any]:
        """Every 4th step's loss (and GRPO's mean reward), once per step; and the stop on cancellation."""
        reported: set[int] = set()

        def report(step: int, total: int, logs: dict[str, Any]) -> None:
            shown = {key: float(logs[key]) for key in ("loss", "reward") if key in logs}
            if step and (step % 4 == 0 or step == total) and step not in reported and "loss" in shown:
                reported.add(step)
                say(f"      step {step}/{total}  " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))

        return [StepReporter(report), StopWhenSet(stop)]

    sft_summary = await train_on_cpu_thread(
        stop,
        train,
        build_train_config(
            "sft", data=data / "sft.jsonl", base=MODEL, out=adapters / "sft", max_steps=scale.sft_steps, overwrite=True
        ),
        progress(),
    )
    dpo_summary = await train_on_cpu_thread(
        stop,
        train,
        build_train_config(
            "dpo",
            data=data / "dpo.jsonl",
            base=MODEL,
            out=adapters / "dpo",
            max_steps=scale.dpo_steps,
            init_adapter=adapters / "sft",
            overwrite=True,
        ),
        progress(),
    )
    say(
        f"      SFT loss {sft_summary['final_loss']:.3f}, DPO loss {dpo_summary['final_loss']:.3f}; "
        f"adapter {adapters / 'dpo'}"
    )

    users = _count(scale.grpo_personas, "simulated user")
    stage(f"online RL: GRPO from the DPO adapter, {scale.grpo_steps} steps, {users} x {scale.grpo_group} replies "
          "per turn, reward persona_similarity")  # fmt: skip
    settings = grpo_settings(scale, adapters / "grpo", adapters / "dpo")
    grpo_config = {"grpo": settings.model_dump(mode="json"), "judge_audit": audits["reward"][0]}
    grpo_run = store.start_run("aloe demo: train grpo", grpo_config, settings.seed)
    grpo = await train_on_cpu_thread(stop, run_grpo, store, config, settings, grpo_run, audits["reward"][0], progress())
    store.finish_run(grpo_run, "completed")
    rewards = grpo["rewards_per_step"]
    say(f"      mean reward {format_value(rewards[0], 2)} at step 1, {format_value(rewards[-1], 2)} at step "
        f"{len(rewards)} ({_count(grpo['conversations_started'], 'conversation')}); "
        f"adapter {adapters / 'grpo'}")  # fmt: skip

    methods = {"base": MODEL, "DPO": f"{MODEL}+{adapters / 'dpo'}", "GRPO": f"{MODEL}+{adapters / 'grpo'}"}
    stage(f"evaluation: {', '.join(methods)}; {scale.eval_personas} personas x {scale.eval_turns} turns, live")
    eval_runs = []
    for method, model in methods.items():
        cfg = eval_config(model, scale)
        run_config = {"eval_resolved": cfg.model_dump(mode="json"), "judge_audit": audits["eval"][0]}
        run_id = store.start_run(f"aloe demo: eval {model}", run_config, 0)
        create_eval_conversations(store, run_id, cfg)
        evaluated = await run_evaluation(store, backends, cfg, run_id)
        store.finish_run(run_id, "completed" if evaluated.finished else "incomplete")
        eval_runs.append(run_id)
        m = run_results(store, run_id, n_boot=0)["metrics"]
        curve = " ".join(format_value(v, 2) for v in m.al)
        say(f"      {method}: AVG {format_value(m.avg, 2)}, IR {format_value(m.ir, 3)}, AL(k) {curve}, "
            f"unscored {m.unscored}")  # fmt: skip

    stage("report: metrics with CIs, methods table on both judges, AL(k) plot, HTML tree")
    from aloekit.viewer import tree_page

    summary = write_report(store, eval_runs, out / "report", note=HONESTY_NOTE)
    first = trees.conversations(sim_run)[0].id
    (out / "tree.html").write_text(tree_page(store, first, standalone=True)[0], encoding="utf-8")
    await backends.aclose()
    store.finish_run(demo_run, "completed")
    stage_minutes.append(round((time.monotonic() - stage_started[-1]) / 60, 1))
    return {
        "simulation_run": sim_run,
        "eval_runs": eval_runs,
        "judge_audits": {
            stage: {
                "id": audit_id,
                "passed": result.passed,
                "summary": result.summary_line(),
                "meaning": result.plain_words(),
            }
            for stage, (audit_id, result) in audits.items()
        },  # fmt: skip
        "dpo_pairs": len(dpo),
        "methods": dict(zip(methods, eval_runs, strict=True)),
        "methods_table": summary.get("methods_table"),
        "second_judge_methods_table": summary.get("second_judge_methods_table"),
        "grpo": {key: grpo[key] for key in ("rewards_per_step", "conversations_started", "steps", "run_id")},
        "stage_minutes": stage_minutes,
        "report": str(out / "report" / "report.md"),
        "plot": str(out / "report" / "al_curve.png"),
        "tree_html": str(out / "tree.html"),
        "adapter": str(adapters / "grpo"),
        "db": str(out / "aloe.db"),
    }


def _end_open_runs(db: Path, exc: BaseException) -> None:
    """Leave no demo run ``running`` after a failure or an interruption: each says how it ended."""
    if not db.is_file():
        return
    store = Store(db)
    status, reason = run_end_state(exc)
    for (run_id,) in store.conn.execute("SELECT id FROM runs WHERE status = 'running'").fetchall():
        store.finish_run(run_id, status, reason)
        store.settle_conversations(run_id)
    store.close()


def grpo_claim(table: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the GRPO adapter beat the base on the judge it was trained against: a paired CI above zero."""
    if table is None:
        return {"beats_base": None, "sentence": "GRPO vs base on persona_similarity: not compared."}
    diff = table["rows"][-1]["vs_base"]["avg_diff"]
    beats = diff["low"] > 0
    verdict = "beats the base (the interval excludes zero)" if beats else (
        "does not beat the base with an interval excluding zero")  # fmt: skip
    return {"beats_base": beats, "avg_diff": diff,
            "sentence": f"GRPO vs base on persona_similarity, the reward it trained on: AVG difference {iv(diff)}; "
                        f"the GRPO adapter {verdict}. That judge measures topical tailoring, not style."}  # fmt: skip


def run_demo(out: Path, quick: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the pipeline into ``out``; returns where everything is."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = run_async(_run_demo(out, QUICK if quick else FULL, say))
    except BaseException as exc:
        _end_open_runs(out / "aloe.db", exc)
        raise
    result["minutes"] = round((time.monotonic() - started) / 60, 1)
    say("")
    for key, title in (("methods_table", "the scorer"), ("second_judge_methods_table", "persona_similarity")):
        if result[key] is not None:
            say(f"Every method against the base, on {title}:")
            say("\n".join(methods_table_lines(result[key])))
            say("")
    result["grpo_vs_base"] = grpo_claim(result["second_judge_methods_table"])
    say(result["grpo_vs_base"]["sentence"])
    scorer = result["judge_audits"]["eval"]
    say(
        f"What the numbers mean: the scorer {'passed' if scorer['passed'] else 'failed'} its audit. {scorer['meaning']}"
    )
    say(f"done in {result['minutes']} min. {HONESTY_NOTE}")
    say(f"report:  {result['report']}  (plot: {result['plot']})")
    say(f"tree:    {result['tree_html']}  (open it in a browser)")
    say(f'adapter: {result["adapter"]}  (chat: aloe chat {MODEL}+{result["adapter"]} "Hi!")')
    say(f"browse:  aloe view --db {result['db']}")
    return result
