"""``aloe eval`` and ``aloe compare``: the ALOE benchmark and paired comparisons of two runs."""

from __future__ import annotations

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


@click.command("eval")
@click.option("--model", "model_spec", help="Backend spec of the model under test (e.g. local:smollm2+adapters/dpo).")
@click.option("--role", "roles", multiple=True, metavar="ROLE=SPEC", help="user=SPEC or judge=SPEC. Repeatable.")
@click.option(
    "--mode", type=click.Choice(["live", "replay"]), help="live (default): the user reacts; replay: stored user turns."
)
@click.option("--replay-run", help="replay mode: the run whose trees supply personas and user turns.")
@click.option("--eval-set", help="builtin (default, ours, not the paper's) or a folder with the paper's two files.")
@click.option("--personas", type=COUNT, help="Only the first N personas.")
@click.option("--turns", type=TURNS, help="Turns per conversation (K, default 10).")
@click.option("--concurrency", type=CONCURRENCY, help="Conversations in progress at once.")
@click.option(
    "--baseline",
    metavar="NAME",
    help="blind (default), oracle (told the true persona), reminder, cot, self-critique, or a plugin's.",
)
@click.option("--seed", "eval_seed", type=SEED, help="Seed (default: --seed).")
@click.option("--resume", "resume_run", metavar="RUN", help="Continue the unfinished conversations of RUN.")
@budget_options
@pass_app
def eval_command(
    app: App,
    model_spec: str | None,
    roles: tuple[str, ...],
    mode: str | None,
    replay_run: str | None,
    eval_set: str | None,
    personas: int | None,
    turns: int | None,
    concurrency: int | None,
    baseline: str | None,
    max_calls: int | None,
    max_tokens: int | None,
    eval_seed: int | None,
    resume_run: str | None,
) -> int:
    """Run the ALOE benchmark: a simulated user chats with the model; a judge scores every reply 1-5."""
    from pydantic import ValidationError

    from aloekit.agents.backends import BackendPool, Budget
    from aloekit.evaluation import EvalConfig, create_eval_conversations, plan_eval_conversations, run_evaluation
    from aloekit.evaluation.audit import audit_notice
    from aloekit.evaluation.report import (
        eval_config,
        format_value,
        option_share_line,
        run_results,
        score_notes,
        second_judge_line,
    )
    from aloekit.hardware import run_defaults

    store = app.store
    replayed = None
    if resume_run:
        base = eval_config(store, resume_run)  # first: an unknown run is the error to name
        refuse_on_resume({"--model": model_spec, "--role": roles, "--mode": mode, "--replay-run": replay_run,
                          "--eval-set": eval_set, "--personas": personas, "--turns": turns, "--baseline": baseline,
                          "--seed": eval_seed})  # fmt: skip
        config = base.model_copy(update={"max_calls": max_calls, "max_tokens": max_tokens,
                                         "concurrency": concurrency or base.concurrency})  # fmt: skip
        run_id = resume_run
    else:
        if not model_spec:
            raise AloeError("eval needs --model SPEC (or --resume RUN)")
        flags = {"model": model_spec, "mode": mode, "replay_run": replay_run, "eval_set": eval_set,
                 "personas": personas, "turns": turns, "concurrency": concurrency, "baseline": baseline,
                 "max_calls": max_calls, "max_tokens": max_tokens,
                 "seed": app.seed_for(eval_seed, app.config.evaluation)}  # fmt: skip
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            config = EvalConfig.resolve(app.config.evaluation, given)
        except ValidationError as exc:
            raise app.section_error("evaluation", exc, app.typed_flags(flags, eval_seed)) from None
        config = apply_roles(config, roles)
        plan = plan_eval_conversations(store, config)

    specs = {config.model, config.judge.backend, *([config.user.backend] if config.mode == "live" else []),
             *([config.second_judge.backend] if config.second_judge is not None else [])}  # fmt: skip
    check_run_inputs(app, specs, config.check_roles)  # before any run row is written or changed
    given = resume_run is not None or concurrency is not None or "concurrency" in app.config.evaluation
    app.config, in_flight, hardware = run_defaults(app.config, specs, config.concurrency, given)
    if resume_run:
        refuse_changed_files(store, run_id, hardware)
    config = config.model_copy(update={"concurrency": in_flight})
    if not resume_run:
        notice = audit_notice(store, BackendPool(app.config), "eval", config.judge)  # after the spec checks
        run_config = {**app.config.model_dump(mode="json"), "eval_resolved": config.model_dump(mode="json"),
                      "judge_audit": notice.audit_id, "hardware": hardware}  # fmt: skip
        run_id = store.start_run(command_line(), run_config, config.seed)
    with run_lifetime(store, run_id):
        if resume_run:
            store.update("runs", run_id, {"status": "running", "ended_at": None, "error": None})
        else:
            replayed = create_eval_conversations(store, run_id, config, plan)
            app.notify(notice.text, warning=notice.warning)
        budget = Budget(max_calls=config.max_calls, max_tokens=config.max_tokens)
        backends = BackendPool(app.config, store=store, run_id=run_id, budget=budget)
        summary = run_with_progress(
            app, "eval", run_id, backends, specs,
            lambda on_turn, on_done: run_evaluation(store, backends, config, run_id, replayed, on_turn, on_done),
        )  # fmt: skip
    results = run_results(store, run_id, n_boot=0)  # point metrics only; `aloe report` adds the CIs
    m = results["metrics"]
    out = {
        "run_id": run_id, "statuses": summary.statuses, "turns_saved": summary.turns_saved, "unscored": m.unscored,
        "avg": m.avg, "ir": m.ir, "r2": m.r2, "al": m.al, "scored": m.scored, "failures": summary.failures,
        "judge_audit": results["audit_id"], "score_modes": results["score_modes"],
        "option_share": results["option_share"],
        "second_judge": None if results["second"] is None else {
            "kind": results["second"]["kind"], "avg": results["second"]["metrics"].avg,
            "ir": results["second"]["metrics"].ir, "agreement": results["second"]["agreement"]},
    }  # fmt: skip
    if app.as_json:
        app.emit_json(out)
        return run_exit_status(summary.statuses)
    status_line = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    click.echo(f"run {run_id} ({config.mode}): {status_line}; {sum(m.scored)} turns scored, {m.unscored} unscored")
    click.echo(f"AVG {format_value(m.avg)}  IR {format_value(m.ir)}  R2 {format_value(m.r2)}  AL(k) "
               + " ".join(f"{format_value(v, 2)} (n={n})" for v, n in zip(m.al, m.scored, strict=True)))  # fmt: skip
    if line := second_judge_line(results):
        click.echo(line)
    for line in [*score_notes(results), option_share_line(results)]:
        if line:
            click.echo(line)
    for failure in summary.failures:
        click.echo(f"  failed: {failure}")
    if not summary.finished:
        click.echo(f"resume with: aloe eval --resume {run_id}")
    return run_exit_status(summary.statuses)


@click.command("compare")
@click.argument("run_ids", metavar="RUN_A RUN_B | --table BASE RUN...", nargs=-1, required=True)
@click.option("--table", is_flag=True, help="One table of every run against the first (the base), Holm-adjusted.")
@click.option("--second-judge", is_flag=True, help="With --table: compare on the runs' second judge.")
@pass_app
def compare_command(app: App, run_ids: tuple[str, ...], table: bool, second_judge: bool) -> None:
    """Compare evaluation runs on their shared personas: B minus A (paired bootstrap and Wilcoxon), or with
    --table every method against the base, on one judge."""
    from aloekit.evaluation.report import (
        comparison_dict,
        comparison_lines,
        methods_table,
        methods_table_lines,
        run_results,
    )

    if second_judge and not table:
        raise AloeError("--second-judge needs --table")
    if not table and len(run_ids) != 2:
        raise AloeError(f"compare takes two runs (RUN_A RUN_B), or --table with the base first; got {len(run_ids)}")
    results = [run_results(app.store, run_id, n_boot=0) for run_id in run_ids]
    if table:
        methods = methods_table(results, judge="second_judge" if second_judge else "judge")
        app.emit_json(methods) if app.as_json else click.echo("\n".join(methods_table_lines(methods)))
        return
    comparison = comparison_dict(*results)
    if app.as_json:
        app.emit_json(comparison)
        return
    click.echo(f"{run_ids[1]} minus {run_ids[0]}")
    click.echo("\n".join(comparison_lines(comparison)))


commands = (eval_command, compare_command)
