"""``aloe personas``: import, grow by self-generation, inspect and export the persona pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from aloekit.agents.backends import BackendPool
from aloekit.cli.app import (
    COUNT,
    NON_NEGATIVE,
    TEMPERATURE,
    App,
    FiniteFloatRange,
    check_run_inputs,
    ensure_loaded,
    pass_app,
    run_recorded,
)
from aloekit.outputs import write_whole

SIMILARITY = FiniteFloatRange(0, 1, min_open=True)
POSITIVE_FLOAT = FiniteFloatRange(0, min_open=True)
KIND_CHOICE = click.Choice(["profile", "personality"])


@click.group()
def personas() -> None:
    """Import, generate, inspect and export the persona pool."""


@personas.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--kind", type=KIND_CHOICE, help="Kind of plain-text entries (pair objects carry their own).")
@click.option("--skip-bad", is_flag=True, help="Import the good lines and list the bad ones.")
@pass_app
def personas_import(app: App, files: tuple[Path, ...], kind: str | None, skip_bad: bool) -> None:
    """Import persona FILES (.jsonl strings or objects, .json array, .csv with a text column, .txt lines)."""
    from aloekit.personas import PersonaPool
    from aloekit.personas.io import check_persona_file

    for path in files:  # all of them, before any is imported: a missing third file once left two imported
        check_persona_file(path)
    pool = PersonaPool(app.store)
    reports = {}
    for path in files:
        report = pool.import_file(path, kind, skip_bad=skip_bad)
        reports[str(path)] = report
        for line in report.warnings:  # escaped: file content must not be read as rich markup
            app.console.print(f"[yellow]warning:[/] {escape(line)}")
        for line in report.bad:
            app.console.print(f"[red]skipped:[/] {escape(line)}")
        if report.bad_count > len(report.bad):
            app.console.print(f"[red]skipped:[/] ... and {report.bad_count - len(report.bad)} more bad lines")
        if not app.as_json:
            click.echo(
                f"{path}: {report.added} added, {report.duplicates} duplicates skipped"
                + (f", {report.pairs} pairs" if report.pairs else "")
                + (f", {report.bad_count} bad lines skipped" if report.bad_count else "")
            )
    if app.as_json:
        app.emit_json({path: vars(report) for path, report in reports.items()})


@personas.command("generate")
@click.option("--kind", type=KIND_CHOICE, required=True)
@click.option("--target", type=COUNT, required=True, help="Pool size to reach.")
@click.option("--backend", "backend_spec", default="local:smollm2", show_default=True, help="Generator backend spec.")
@click.option(
    "--embedder", default="minilm", show_default=True, help="minilm, st:PATH, openai:MODEL or openai:URL#MODEL."
)
@click.option(
    "--threshold",
    type=SIMILARITY,
    default=0.6,
    show_default=True,
    help="Max cosine similarity to the pool.",
)
@click.option("--examples", type=COUNT, default=5, show_default=True, help="Pool examples per prompt.")
@click.option("--candidates", type=COUNT, default=20, show_default=True, help="New entries asked for per round.")
@click.option("--max-rounds", type=COUNT, default=100, show_default=True)
@click.option("--saturation-rounds", type=COUNT, default=3, show_default=True)
@click.option("--saturation-min", type=NON_NEGATIVE, default=1, show_default=True)
@click.option(
    "--seeds", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Seed file for an empty pool."
)
@click.option("--max-tokens", type=COUNT, default=1500, show_default=True)
@click.option("--temperature", type=TEMPERATURE, default=0.9, show_default=True)
@click.option(
    "--repetition-penalty",
    type=POSITIVE_FLOAT,
    help="Penalty on repeated tokens (in-process models, vLLM).",
)
@pass_app
def personas_generate(
    app: App,
    kind: str,
    target: int,
    backend_spec: str,
    embedder: str,
    threshold: float,
    examples: int,
    candidates: int,
    max_rounds: int,
    saturation_rounds: int,
    saturation_min: int,
    seeds: Path | None,
    max_tokens: int,
    temperature: float,
    repetition_penalty: float | None,
) -> None:
    """Grow the pool of KIND to TARGET by LLM self-generation, keeping only dissimilar candidates."""
    from aloekit.personas import GenerationConfig, PersonaPool, generate_personas, get_embedder

    config = GenerationConfig(
        kind=kind,
        target=target,
        threshold=threshold,
        examples_per_prompt=examples,
        candidates_per_round=candidates,
        max_rounds=max_rounds,
        saturation_rounds=saturation_rounds,
        saturation_min_new=saturation_min,
        seeds_file=seeds,
        seed=app.config.seed,
        max_tokens=max_tokens,
        temperature=temperature,
        repetition_penalty=repetition_penalty,
    )
    pool = PersonaPool(app.store)
    if seeds is not None and not pool.count(kind):  # the seeds an empty pool starts from: read before the run row
        pool.check_seed_file(seeds, kind)
    check_run_inputs(app, [backend_spec])  # before the embedder loads
    embedding_model = get_embedder(embedder)

    async def grow(backends: BackendPool) -> Any:
        await ensure_loaded(app, backends, backend_spec)
        client = backends.client(backend_spec, role="persona_generator")
        progress = app.progress("{task.description}", "{task.fields[note]}")
        with progress:
            task = progress.add_task(f"{kind} pool", total=target, completed=pool.count(kind), note="embedding pool")
            tried = kept = 0

            def on_round(r: Any) -> None:
                nonlocal tried, kept
                tried, kept = tried + r.candidates, kept + r.accepted
                rate = f"{kept / tried:.0%}" if tried else "-"
                progress.update(task, completed=r.pool_size, note=f"round {r.round}, accepted {kept}/{tried} ({rate})")

            return await generate_personas(
                pool, client, embedding_model, config, source=f"generated:{backend_spec}", on_round=on_round
            )

    report = run_recorded(app, grow)
    summary = {
        "kind": kind,
        "start_size": report.start_size,
        "final_size": report.final_size,
        "rounds": len(report.rounds),
        "acceptance_rate": round(report.acceptance_rate, 3),
        "stop_reason": report.stop_reason,
    }
    if app.as_json:
        app.emit_json(summary)
    else:
        click.echo(
            f"{kind}: {report.start_size} -> {report.final_size} in {len(report.rounds)} rounds, "
            f"acceptance {report.acceptance_rate:.0%}; stopped: {report.stop_reason}"
        )


@personas.command("list")
@click.option("--kind", type=KIND_CHOICE)
@click.option("--limit", type=COUNT, default=20, show_default=True)
@pass_app
def personas_list(app: App, kind: str | None, limit: int) -> None:
    """Show pooled personas, oldest first."""
    from aloekit.personas import PersonaPool

    rows = PersonaPool(app.store).list(kind, limit=limit)
    if app.as_json:
        app.emit_json([p.model_dump() for p in rows])
        return
    for p in rows:
        click.echo(f"{p.id}  {p.kind:<11}  {p.source:<24}  {p.text[:100]}")


@personas.command("stats")
@click.option("--embedder", default="minilm", show_default=True)
@click.option("--no-similarity", is_flag=True, help="Counts only (no embedding).")
@pass_app
def personas_stats(app: App, embedder: str, no_similarity: bool) -> None:
    """Counts per kind and mean/max nearest-neighbour cosine similarity."""
    from aloekit.personas import PersonaPool, get_embedder

    stats = PersonaPool(app.store).stats(None if no_similarity else get_embedder(embedder))
    if app.as_json:
        app.emit_json(stats)
        return
    for kind, entry in stats.items():
        line = f"{kind:<11} {int(entry['count']):>6}"
        if "mean_nn_similarity" in entry:
            mean, top = entry["mean_nn_similarity"], entry["max_nn_similarity"]
            line += f"   nearest-neighbour similarity mean {mean:.3f}, max {top:.3f}"
        click.echo(line)


@personas.command("export")
@click.option("--kind", type=KIND_CHOICE, required=True)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help=".jsonl (the paper's format), .json, .csv or .txt"
)
@pass_app
def personas_export(app: App, kind: str, out: Path) -> None:
    """Write the pool of KIND to a file."""
    from aloekit.personas import PersonaPool, write_persona_file
    from aloekit.personas.io import persona_file_suffix

    persona_file_suffix(out)  # named as given, not as the temporary file written first
    personas = PersonaPool(app.store).list(kind)
    write_whole(out, "--out", lambda target: write_persona_file(personas, target))
    n = len(personas)
    app.emit_json({"kind": kind, "out": str(out), "count": n}) if app.as_json else click.echo(
        f"wrote {n} {kind}s to {out}"
    )


commands = (personas,)
