"""``aloe judge audit``: measure a judge on known-answer probes before trusting it."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from aloekit.agents.backends import BackendPool
from aloekit.cli.app import CONCURRENCY, SEED, App, ensure_loaded, pass_app, run_recorded
from aloekit.errors import AloeError
from aloekit.limits import MAX_CONVERSATIONS


@click.group()
def judge() -> None:
    """Measure a judge before trusting it."""


@judge.command("audit")
@click.option(
    "--stage",
    type=click.Choice(["eval", "simulate"]),
    default="eval",
    show_default=True,
    help="eval: the 1-5 scorer of aloe eval; simulate: the preference judge of aloe simulate.",
)
@click.option(
    "--role", "roles", multiple=True, metavar="ROLE=SPEC", help="judge=SPEC, user=SPEC or generator=SPEC. Repeatable."
)
@click.option("--eval-set", help="Personas of the probes: builtin (default) or a folder with the paper's files.")
# Two at least: each persona's probes borrow another persona's profile as the wrong answer.
@click.option("--personas", type=click.IntRange(2, MAX_CONVERSATIONS), help="Eval personas probed, two probes each "
              "(default 20).")  # fmt: skip
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), help="JSONL of reference preferences.")
@click.option("--concurrency", type=CONCURRENCY, default=8, show_default=True, help="Personas probed at once.")
@click.option("--seed", "audit_seed", type=SEED, help="Seed (default: --seed).")
@click.option("--judge-both-orders", is_flag=True, default=None, help="simulate: as aloe simulate --judge-both-orders.")
@click.option("--paper-exact", is_flag=True, default=None, help="simulate: as aloe simulate --paper-exact.")
@pass_app
def judge_audit(
    app: App,
    stage: str,
    roles: tuple[str, ...],
    eval_set: str | None,
    personas: int | None,
    labels_path: Path | None,
    concurrency: int,
    audit_seed: int | None,
    judge_both_orders: bool | None,
    paper_exact: bool | None,
) -> None:
    """Known-answer probes from the eval personas: accuracy with a CI, position flips, invalid answers."""
    from dataclasses import asdict

    from pydantic import ValidationError

    from aloekit.evaluation.audit import audit_config, check_audit_roles, read_labels, run_audit, save_audit
    from aloekit.evaluation.task import load_eval_personas

    section = app.config.evaluation if stage == "eval" else app.config.simulation
    assignments = {}
    for assignment in roles:
        role, sep, spec = assignment.partition("=")
        if not sep or not spec or role.strip() not in ("judge", "user", "generator"):
            raise AloeError(f"--role expects judge=SPEC, user=SPEC or generator=SPEC, got {assignment!r}")
        assignments[role.strip()] = spec.strip()
    if stage == "eval" and (judge_both_orders or paper_exact):
        raise AloeError("--judge-both-orders and --paper-exact describe the simulation judge: use --stage simulate")
    try:
        config = audit_config(stage, section, assignments, eval_set=eval_set, personas=personas,
                              concurrency=concurrency, seed=app.seed_for(audit_seed, section),
                              both_orders=judge_both_orders, paper_exact=paper_exact)  # fmt: skip
    except ValidationError as exc:
        raise app.section_error("evaluation" if stage == "eval" else "simulation", exc) from None
    labels = read_labels(labels_path) if labels_path else None
    load_eval_personas(config.eval_set)  # a bad eval set fails here, before the run row
    check_audit_roles(config)  # and a judge of the wrong kind

    async def audit(backends: BackendPool) -> tuple[str, Any]:
        for spec in sorted({config.judge.backend, config.user.backend, config.generator.backend}):
            await ensure_loaded(app, backends, spec)
        with app.console.status("probing the judge") if not (app.quiet or app.as_json) else nullcontext():
            result = await run_audit(config, backends, labels)
        return save_audit(app.store, str(backends.run_id), result), result

    audit_id, result = run_recorded(
        app,
        audit,
        {"audit": config.model_dump(mode="json")},
        config.seed,
        specs={config.judge.backend, config.user.backend, config.generator.backend},
    )
    if app.as_json:
        app.emit_json({"id": audit_id, "passed": result.passed, **asdict(result)})
        return
    click.echo(f"audit {audit_id} of {config.judge.backend} ({config.judge.kind}, --stage {stage}): "
               f"{result.summary_line()}")  # fmt: skip
    for kind, counts in sorted(result.by_kind.items()):
        click.echo(f"  {kind.replace('_', ' ')} probes: {counts['correct']}/{counts['trials']} correct")
    if result.labels:
        kappa = result.labels["kappa"]
        click.echo(f"  reference labels: accuracy {result.labels['accuracy']:.0%} on {result.labels['rows']} rows, "
                   f"Cohen's kappa {'n/a' if kappa is None else f'{kappa:.2f}'}")  # fmt: skip
    click.echo(result.plain_words())


commands = (judge,)
