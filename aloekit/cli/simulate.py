"""``aloe simulate``: grow conversation trees."""

from __future__ import annotations

import json
from typing import Any

import click

from aloekit.cli.app import (
    CONCURRENCY,
    COUNT,
    SEED,
    TURNS,
    App,
    apply_roles,
    budget_options,
    check_run_inputs,
    command_line,
    pass_app,
    refuse_changed_files,
    refuse_on_resume,
    run_exit_status,
    run_lifetime,
    run_with_progress,
)
from aloekit.errors import AloeError


def _simulation_config(app: App, overrides: dict[str, Any], roles: tuple[str, ...], typed: set[str]) -> Any:
    from pydantic import ValidationError

    from aloekit.graphs import SimulationConfig

    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        config = SimulationConfig.resolve(app.config.simulation, flags)
    except ValidationError as exc:
        raise app.section_error("simulation", exc, typed) from None
    return apply_roles(config, roles)


@click.command()
@click.option("--conversations", type=COUNT, help="Conversation trees to grow.")
@click.option("--turns", type=TURNS, help="User turns per conversation.")
@click.option("--concurrency", type=CONCURRENCY, help="Conversations in progress at once.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="ROLE=SPEC",
    help="Backend for a role: user, inducer, preferred, plain, judge, or all. Repeatable.",
)
@click.option("--judge-both-orders", is_flag=True, default=None, help="Ask the judge in both orders.")
@click.option("--paper-exact", is_flag=True, default=None, help="The authors' judge: fixed order, exact match.")
@click.option("--seed", "sim_seed", type=SEED, help="Seed for personas, judge order and branches (default: --seed).")
@click.option("--eval-set", help="Eval set whose personas are kept out of sampling (default: builtin).")
@click.option("--allow-eval-personas", is_flag=True, default=None, help="Also sample the eval set's personas.")
@click.option("--resume", "resume_run", metavar="RUN", help="Continue the unfinished conversations of RUN.")
@budget_options
@pass_app
def simulate(
    app: App,
    conversations: int | None,
    turns: int | None,
    concurrency: int | None,
    roles: tuple[str, ...],
    max_calls: int | None,
    max_tokens: int | None,
    judge_both_orders: bool | None,
    paper_exact: bool | None,
    sim_seed: int | None,
    eval_set: str | None,
    allow_eval_personas: bool | None,
    resume_run: str | None,
) -> int:
    """Grow conversation trees: persona-conditioned users chat with candidate responders, judged per turn."""
    from pydantic import ValidationError

    from aloekit.agents.backends import BackendPool, Budget
    from aloekit.config import format_loc
    from aloekit.evaluation.audit import audit_notice
    from aloekit.evaluation.task import eval_persona_ids
    from aloekit.graphs import SimulationConfig, TreeStore, run_conversations
    from aloekit.hardware import run_defaults
    from aloekit.personas import PersonaPool

    store, trees = app.store, TreeStore(app.store)
    flags = {
        "conversations": conversations,
        "turns": turns,
        "concurrency": concurrency,
        "max_calls": max_calls,
        "max_tokens": max_tokens,
        "judge_both_orders": judge_both_orders,
        "paper_exact": paper_exact,
        "seed": app.seed_for(sim_seed, app.config.simulation),
        "eval_set": eval_set,
        "allow_eval_personas": allow_eval_personas,
    }
    excluded: dict[str, Any] = {}
    if resume_run:
        run = store.get_run(resume_run)
        if run is None:
            raise AloeError(f"no run {resume_run!r} in {store.path}")
        refuse_on_resume({"--conversations": conversations, "--turns": turns, "--role": roles,
                          "--judge-both-orders": judge_both_orders, "--paper-exact": paper_exact, "--seed": sim_seed,
                          "--eval-set": eval_set, "--allow-eval-personas": allow_eval_personas})  # fmt: skip
        try:
            stored = json.loads(run["config"]).get("simulation_resolved")
        except (ValueError, AttributeError):  # a damaged row: say so rather than crash
            raise AloeError(f"run {resume_run}: its stored config is not readable JSON") from None
        if stored is None:
            raise AloeError(f"run {resume_run} is not a simulation run")
        try:
            base = SimulationConfig.model_validate(stored)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise AloeError(f"run {resume_run}: its stored simulation config no longer validates: field "
                            f"{format_loc(err['loc'])}: {err['msg']}") from None  # fmt: skip
        # A budget caps one invocation: the resumed run gets only the caps given now.
        resumed = {"max_calls": max_calls, "max_tokens": max_tokens, "concurrency": concurrency or base.concurrency}
        config = SimulationConfig.model_validate({**base.model_dump(), **resumed})
        run_id = resume_run
    else:
        config = _simulation_config(app, flags, roles, app.typed_flags(flags, sim_seed))
        check_run_inputs(app, config.backend_specs(), config.check_roles)  # before the pool is seeded
        pool = PersonaPool(store)
        for kind in ("profile", "personality"):
            pool.ensure_seeds(kind)
        held_out = set() if config.allow_eval_personas else eval_persona_ids(config.eval_set)
        excluded = {kind: sum(p.id in held_out for p in pool.list(kind)) for kind in ("profile", "personality")}
        try:
            personas = pool.sample_pairs(config.conversations, seed=config.seed, exclude=held_out)
        except AloeError as exc:
            if not held_out:
                raise
            raise AloeError(f"{exc}, after keeping the {config.eval_set} eval personas out (import more personas, "
                            "or pass --allow-eval-personas)") from None  # fmt: skip
        notice = audit_notice(
            store, BackendPool(app.config), "simulate", config.judge, config.paper_exact, config.judge_both_orders
        )

    specs = set(config.backend_specs())
    if resume_run:
        check_run_inputs(app, specs, config.check_roles)  # before the run row is changed
    given = resume_run is not None or concurrency is not None or "concurrency" in app.config.simulation
    app.config, in_flight, hardware = run_defaults(app.config, specs, config.concurrency, given)
    if resume_run:
        refuse_changed_files(store, run_id, hardware)
    config = config.model_copy(update={"concurrency": in_flight})
    if not resume_run:
        run_config = {**app.config.model_dump(mode="json"), "simulation_resolved": config.model_dump(mode="json"),
                      "excluded_eval_personas": excluded, "judge_audit": notice.audit_id,
                      "hardware": hardware}  # fmt: skip
        run_id = store.start_run(command_line(), run_config, config.seed)
    with run_lifetime(store, run_id):
        if resume_run:
            store.update("runs", run_id, {"status": "running", "ended_at": None, "error": None})
        else:
            trees.create_conversations(run_id, personas, config.turns)
            app.notify(notice.text, warning=notice.warning)
            if any(excluded.values()):
                app.say(f"kept out of sampling: {excluded['profile']} profiles and {excluded['personality']} "
                        f"personalities of the {config.eval_set} eval set")  # fmt: skip
        budget = Budget(max_calls=config.max_calls, max_tokens=config.max_tokens)
        backends = BackendPool(app.config, store=store, run_id=run_id, budget=budget)
        summary = run_with_progress(
            app, "simulate", run_id, backends, specs,
            lambda on_turn, on_done: run_conversations(trees, backends, config, run_id, on_turn, on_done),
        )  # fmt: skip
    result = {
        "run_id": run_id,
        "conversations": len(trees.conversations(run_id)),
        "statuses": summary.statuses,
        "turns_saved": summary.turns_saved,
        "unlabelled_turns": summary.unlabelled_turns,
        "seed": config.seed,
        "excluded_eval_personas": excluded,
        "usage": backends.ledger.as_dict(),
        "failures": summary.failures,
    }
    if app.as_json:
        app.emit_json(result)
        return run_exit_status(summary.statuses)
    status_line = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    click.echo(
        f"run {run_id}: {status_line}; {summary.turns_saved} turns saved, "
        f"{summary.unlabelled_turns} without a valid judge verdict"
    )
    for failure in summary.failures:
        click.echo(f"  failed: {failure}")
    if not summary.finished:
        click.echo(f"resume with: aloe simulate --resume {run_id}")
    return run_exit_status(summary.statuses)


commands = (simulate,)
