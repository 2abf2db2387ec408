"""The ``aloe`` command line: one subcommand per stage."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from aloekit.agents.backends import BackendPool, TransformersChatClient, from_dicts, list_backends
from aloekit.config import AloeConfig, load_config
from aloekit.errors import AloeError
from aloekit.secrets import RedactingFilter
from aloekit.store import Store


@dataclass
class App:
    """What every subcommand shares: the resolved config, output mode and (lazily) the store."""

    config: AloeConfig
    quiet: bool = False
    as_json: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    _store: Store | None = None

    @property
    def store(self) -> Store:
        """The project's database, opened on first use."""
        if self._store is None:
            self._store = Store(self.config.db)
        return self._store

    def say(self, text: str) -> None:
        """Human-oriented progress text on stderr (silent with --quiet or --json)."""
        if not (self.quiet or self.as_json):
            self.console.print(text)

    def emit_json(self, data: Any) -> None:
        """Machine-readable result on stdout."""
        click.echo(json.dumps(data, indent=2, default=str))


class AloeGroup(click.Group):
    """Turns expected errors (bad input, config, unreachable backends) into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, reporting :class:`AloeError` without a traceback."""
        try:
            return super().invoke(ctx)
        except AloeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level, handlers=[handler], format="%(name)s: %(message)s", force=True)
    if verbose < 2:  # HTTP client chatter is only useful when debugging
        for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "autogen_core", "autogen_ext"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    if verbose == 0:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


@click.group(cls=AloeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="ALOE_CONFIG",
    help="TOML or YAML config file (ALOE_CONFIG).",
)
@click.option("--db", type=click.Path(path_type=Path), help="SQLite database (default ./aloe.db, ALOE_DB).")
@click.option("--seed", type=int, help="Seed for everything random (ALOE_SEED).")
@click.option("-q", "--quiet", is_flag=True, help="Print only results.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="aloekit")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    db: Path | None,
    seed: int | None,
    quiet: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """aloekit: teach language models to align with a user's unspoken preferences by interacting."""
    _setup_logging(verbose)
    config = load_config(config_path, overrides={"db": db, "seed": seed})
    ctx.obj = App(config=config, quiet=quiet, as_json=as_json)


pass_app = click.make_pass_decorator(App)


def _command_line() -> str:
    return shlex.join(["aloe", *sys.argv[1:]])


async def _ensure_loaded(app: App, pool: BackendPool, spec: str) -> None:
    inner = pool.inner(spec)
    if isinstance(inner, TransformersChatClient) and not inner.loaded:
        with app.console.status(f"loading {spec} (the first use converts the model, later loads take seconds)"):
            await asyncio.to_thread(inner.load)


async def _chat_once(
    app: App, pool: BackendPool, spec: str, messages: list[dict[str, str]], options: dict[str, Any]
) -> dict[str, Any]:
    await _ensure_loaded(app, pool, spec)
    client = pool.client(spec, role="chat")
    started = time.monotonic()
    with app.console.status(f"waiting for {spec}") if not (app.quiet or app.as_json) else nullcontext():
        result = await client.create(from_dicts(messages), extra_create_args=options)
    return {
        "spec": spec,
        "reply": result.content,
        "finish_reason": result.finish_reason,
        "latency_s": round(time.monotonic() - started, 3),
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
    }


def _run_recorded(app: App, coro_factory: Callable[[BackendPool], Awaitable[Any]]) -> Any:
    """Run ``coro_factory(pool)`` as a recorded run: config, versions and status land in the store."""
    store = app.store
    run_id = store.start_run(_command_line(), app.config.model_dump(mode="json"), app.config.seed)
    pool = BackendPool(app.config, store=store, run_id=run_id)

    async def main() -> Any:
        try:
            return await coro_factory(pool)
        finally:
            await pool.aclose()

    try:
        result = asyncio.run(main())
    except AloeError as exc:
        store.finish_run(run_id, "failed", str(exc))
        raise
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        raise
    store.finish_run(run_id, "completed")
    return result


def _generation_options(max_tokens: int | None, temperature: float | None, seed: int | None) -> dict[str, Any]:
    return {
        k: v for k, v in {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}.items() if v is not None
    }


# backends ---------------------------------------------------------------------------------------------


@cli.group()
def backends() -> None:
    """List and check LLM backends."""


@backends.command("list")
@pass_app
def backends_list(app: App) -> None:
    """Show the registered backend prefixes (built-in and plugins)."""
    rows = [
        {"prefix": b.prefix, "description": b.description, "example": b.example, "source": b.source}
        for b in list_backends()
    ]
    if app.as_json:
        app.emit_json(rows)
        return
    if app.quiet:
        click.echo("\n".join(r["prefix"] for r in rows))
        return
    table = Table("prefix", "description", "example spec", "source")
    for r in rows:
        table.add_row(r["prefix"], r["description"], r["example"], r["source"])
    Console().print(table)


@backends.command("check")
@click.argument("spec")
@click.option("--message", default="What is the capital of France? Answer in one short sentence.", show_default=True)
@click.option("--max-tokens", type=int, default=48, show_default=True)
@pass_app
def backends_check(app: App, spec: str, message: str, max_tokens: int) -> None:
    """Send one short chat to SPEC; print the reply, latency and tokens (exit 1 on failure)."""
    options = {"max_tokens": max_tokens, "temperature": 0}
    result = _run_recorded(
        app, lambda pool: _chat_once(app, pool, spec, [{"role": "user", "content": message}], options)
    )
    if app.as_json:
        app.emit_json({"ok": True, **result})
    elif app.quiet:
        click.echo(result["reply"])
    else:
        click.echo(f"ok  {spec}")
        click.echo(f"reply:   {result['reply']}")
        click.echo(f"latency: {result['latency_s']:.2f}s")
        click.echo(f"tokens:  {result['prompt_tokens']} prompt + {result['completion_tokens']} completion")


@cli.command()
@click.argument("spec")
@click.argument("message", required=False)
@click.option("--system", help="System prompt.")
@click.option("--max-tokens", type=int, help="Upper bound on reply tokens.")
@click.option("--temperature", type=float, help="Sampling temperature (0 = greedy).")
@click.option("--seed", "call_seed", type=int, help="Sampling seed for this chat.")
@pass_app
def chat(
    app: App,
    spec: str,
    message: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    call_seed: int | None,
) -> None:
    """Chat with SPEC: one reply to MESSAGE, or an interactive session when MESSAGE is omitted."""
    options = _generation_options(max_tokens, temperature, call_seed)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    if message is not None:
        history.append({"role": "user", "content": message})
        result = _run_recorded(app, lambda pool: _chat_once(app, pool, spec, history, options))
        app.emit_json(result) if app.as_json else click.echo(result["reply"])
        return

    async def interactive(pool: BackendPool) -> None:
        app.say(f"chatting with {spec}; an empty line, /exit or Ctrl-D ends")
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except EOFError:
                break
            if not line.strip() or line.strip() == "/exit":
                break
            history.append({"role": "user", "content": line})
            result = await _chat_once(app, pool, spec, history, options)
            history.append({"role": "assistant", "content": result["reply"]})
            click.echo(json.dumps(result) if app.as_json else f"bot> {result['reply']}")

    _run_recorded(app, interactive)


# personas ---------------------------------------------------------------------------------------------

KIND_CHOICE = click.Choice(["profile", "personality"])


@cli.group()
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

    pool = PersonaPool(app.store)
    reports = {}
    for path in files:
        report = pool.import_file(path, kind, skip_bad=skip_bad)
        reports[str(path)] = report
        for line in report.warnings:
            app.console.print(f"[yellow]warning:[/] {line}")
        for line in report.bad:
            app.console.print(f"[red]skipped:[/] {line}")
        if not app.as_json:
            click.echo(
                f"{path}: {report.added} added, {report.duplicates} duplicates skipped"
                + (f", {report.pairs} pairs" if report.pairs else "")
                + (f", {len(report.bad)} bad lines skipped" if report.bad else "")
            )
    if app.as_json:
        app.emit_json({path: vars(report) for path, report in reports.items()})


@personas.command("generate")
@click.option("--kind", type=KIND_CHOICE, required=True)
@click.option("--target", type=int, required=True, help="Pool size to reach.")
@click.option("--backend", "backend_spec", default="local:smollm2", show_default=True, help="Generator backend spec.")
@click.option(
    "--embedder", default="minilm", show_default=True, help="minilm, st:PATH, openai:MODEL or openai:URL#MODEL."
)
@click.option("--threshold", type=float, default=0.6, show_default=True, help="Max cosine similarity to the pool.")
@click.option("--examples", type=int, default=5, show_default=True, help="Pool examples per prompt.")
@click.option("--candidates", type=int, default=20, show_default=True, help="New entries asked for per round.")
@click.option("--max-rounds", type=int, default=100, show_default=True)
@click.option("--saturation-rounds", type=int, default=3, show_default=True)
@click.option("--saturation-min", type=int, default=1, show_default=True)
@click.option("--seeds", type=click.Path(path_type=Path), help="Seed file for an empty pool.")
@click.option("--max-tokens", type=int, default=1500, show_default=True)
@click.option("--temperature", type=float, default=0.9, show_default=True)
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
) -> None:
    """Grow the pool of KIND to TARGET by LLM self-generation, keeping only dissimilar candidates."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    )
    pool = PersonaPool(app.store)
    embedding_model = get_embedder(embedder)

    async def grow(backends: BackendPool) -> Any:
        await _ensure_loaded(app, backends, backend_spec)
        client = backends.client(backend_spec, role="persona_generator")
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=app.console,
            disable=app.quiet or app.as_json,
        )
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

    report = _run_recorded(app, grow)
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
@click.option("--limit", type=int, default=20, show_default=True)
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

    n = write_persona_file(PersonaPool(app.store).list(kind), out)
    app.emit_json({"kind": kind, "out": str(out), "count": n}) if app.as_json else click.echo(
        f"wrote {n} {kind}s to {out}"
    )


# runs -------------------------------------------------------------------------------------------------


@cli.group()
def runs() -> None:
    """Inspect recorded runs."""


@runs.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@pass_app
def runs_list(app: App, limit: int) -> None:
    """Show the newest runs with status, calls and tokens."""
    rows = app.store.list_runs(limit)
    if app.as_json:
        app.emit_json([{**r, "config": json.loads(r["config"]), "versions": json.loads(r["versions"])} for r in rows])
        return
    if app.quiet:
        click.echo("\n".join(r["id"] for r in rows))
        return
    table = Table("id", "command", "status", "started", "calls", "tokens")
    for r in rows:
        table.add_row(r["id"], r["command"], r["status"], r["started_at"][:19], str(r["calls"]), str(r["tokens"]))
    Console().print(table)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="aloe")


if __name__ == "__main__":
    main()
