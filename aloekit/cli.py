"""The ``aloe`` command line: one subcommand per stage."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aloekit.agents.backends import BackendPool, TransformersChatClient, from_dicts, list_backends
from aloekit.config import AloeConfig, load_config
from aloekit.errors import AloeError
from aloekit.secrets import RedactingFilter
from aloekit.serialize import to_json
from aloekit.store import Store


@dataclass
class App:
    """What every subcommand shares: the resolved config, output mode and (lazily) the store."""

    config: AloeConfig
    quiet: bool = False
    as_json: bool = False
    cli_seed: int | None = None
    """``aloe --seed N``: wins over seeds in the config file's sections."""
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

    def warn(self, text: str) -> None:
        """A line on stderr that matters for trusting results: shown even with --quiet or --json."""
        click.echo(text, err=True)

    def notify(self, text: str, warning: bool) -> None:
        """:meth:`warn` for a warning, :meth:`say` for anything else."""
        if warning:
            self.warn(text)
        else:
            self.say(text)

    def seed_for(self, flag: int | None, section: dict[str, Any]) -> int:
        """A stage's seed: its own --seed, else ``aloe --seed``, else its config section's, else the top-level one."""
        for candidate in (flag, self.cli_seed, section.get("seed")):
            if candidate is not None:
                return int(candidate)
        return self.config.seed

    def progress(self, label: str, note: str) -> Progress:
        """A progress bar on stderr (off with --quiet/--json): label, bar, done/total, note, elapsed."""
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(note), TimeElapsedColumn())
        return Progress(*columns, console=self.console, disable=self.quiet or self.as_json)

    def emit_json(self, data: Any) -> None:
        """Machine-readable result on stdout."""
        click.echo(to_json(data, indent=2, default=str))


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
    if verbose == 0:  # set through the environment so start-up does not import transformers
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        # trl still passes transformers' renamed gradient_checkpointing options; that is for them to fix.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")


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
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first (registers your roles/backends). Repeatable.",
)
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
    plugins: tuple[str, ...],
) -> None:
    """aloekit: teach language models to align with a user's unspoken preferences by interacting."""
    _setup_logging(verbose)
    config = load_config(config_path, overrides={"db": db, "seed": seed})
    _import_plugins([*config.plugins, *plugins])
    ctx.obj = App(config=config, quiet=quiet, as_json=as_json, cli_seed=seed)


def _import_plugins(modules: list[str]) -> None:
    import importlib

    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a plugin module next to the config file, as users expect
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise AloeError(f"plugin {name!r} could not be imported: {type(exc).__name__}: {exc}") from None


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


def _run_recorded(
    app: App,
    coro_factory: Callable[[BackendPool], Awaitable[Any]],
    extra_config: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Any:
    """Run ``coro_factory(pool)`` as a recorded run: config (plus ``extra_config``), versions, seed and
    status land in the store; the run's id is ``pool.run_id``."""
    store = app.store
    config = {**app.config.model_dump(mode="json"), **(extra_config or {})}
    run_id = store.start_run(_command_line(), config, app.config.seed if seed is None else seed)
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
@click.option("--repetition-penalty", type=float, help="Penalty on repeated tokens (in-process models, vLLM).")
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
    embedding_model = get_embedder(embedder)

    async def grow(backends: BackendPool) -> Any:
        await _ensure_loaded(app, backends, backend_spec)
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


# simulation -------------------------------------------------------------------------------------------


def _simulation_config(app: App, overrides: dict[str, Any], roles: tuple[str, ...]) -> Any:
    from pydantic import ValidationError

    from aloekit.graphs import SimulationConfig

    data = {**app.config.simulation, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        config = SimulationConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise AloeError(f"simulation config: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return _apply_roles(config, roles)


def _apply_roles(config: Any, roles: tuple[str, ...]) -> Any:
    """Apply ``--role ROLE=SPEC`` assignments through the config's own ``with_backend``."""
    for assignment in roles:
        role, sep, spec = assignment.partition("=")
        if not sep or not spec:
            raise AloeError(f"--role expects ROLE=SPEC, got {assignment!r}")
        config = config.with_backend(role.strip(), spec.strip())
    return config


def _run_with_progress(
    app: App, label: str, run_id: str, backends: BackendPool, specs: set[str],
    run: Callable[[Callable[[str, int], None], Callable[[str, str], None]], Awaitable[Any]],
) -> Any:  # fmt: skip
    """Shared by simulate and eval: load in-process models, show progress, run, record how the run ended."""
    from aloekit.graphs import TreeStore

    store = app.store
    trees = TreeStore(store)
    total = len(trees.conversations(run_id))
    counts = {"turns": 0, "failed": 0}

    def stats() -> str:
        usage = backends.ledger.by_role.values()
        tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage)
        return (
            f"turns {counts['turns']}  calls {sum(u.calls for u in usage)}  tokens {tokens}  failed {counts['failed']}"
        )

    async def main() -> Any:
        for spec in sorted(specs):
            await _ensure_loaded(app, backends, spec)
        with app.progress(f"{label} {{task.fields[run]}}", "{task.fields[stats]}") as progress:
            done = total - len(trees.conversations(run_id, statuses=("pending", "running", "incomplete", "failed")))
            task = progress.add_task("", total=total, completed=done, run=run_id, stats=stats())

            def on_turn(cid: str, turn: int) -> None:
                counts["turns"] += 1
                progress.update(task, stats=stats())

            def on_done(cid: str, status: str) -> None:
                counts["failed"] += status == "failed"
                progress.update(task, advance=1 if status == "complete" else 0, stats=stats())

            try:
                return await run(on_turn, on_done)
            finally:
                await backends.aclose()

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        raise
    store.finish_run(run_id, "completed" if summary.finished else "incomplete")
    return summary


@cli.command()
@click.option("--conversations", type=int, help="Conversation trees to grow.")
@click.option("--turns", type=int, help="User turns per conversation.")
@click.option("--concurrency", type=int, help="Conversations in progress at once.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="ROLE=SPEC",
    help="Backend for a role: user, inducer, preferred, plain, judge, or all. Repeatable.",
)
@click.option("--max-calls", type=int, help="Stop cleanly after this many model calls.")
@click.option("--max-tokens", type=int, help="Stop cleanly after this many tokens.")
@click.option("--judge-both-orders", is_flag=True, default=None, help="Ask the judge in both orders.")
@click.option("--paper-exact", is_flag=True, default=None, help="The authors' judge: fixed order, exact match.")
@click.option("--seed", "sim_seed", type=int, help="Seed for personas, judge order and branches (default: --seed).")
@click.option("--eval-set", help="Eval set whose personas are kept out of sampling (default: builtin).")
@click.option("--allow-eval-personas", is_flag=True, default=None, help="Also sample the eval set's personas.")
@click.option("--resume", "resume_run", metavar="RUN", help="Continue the unfinished conversations of RUN.")
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
) -> None:
    """Grow conversation trees: persona-conditioned users chat with candidate responders, judged per turn."""
    from aloekit.agents.backends import Budget
    from aloekit.evaluation.audit import audit_notice
    from aloekit.evaluation.task import eval_persona_ids
    from aloekit.graphs import SimulationConfig, TreeStore, run_conversations
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
        stored = json.loads(run["config"]).get("simulation_resolved")
        if stored is None:
            raise AloeError(f"run {resume_run} is not a simulation run")
        base = SimulationConfig.model_validate(stored)
        # A budget caps one invocation: the resumed run gets only the caps given now.
        resumed = {"max_calls": max_calls, "max_tokens": max_tokens, "concurrency": concurrency or base.concurrency}
        config = SimulationConfig.model_validate({**base.model_dump(), **resumed})
        config = _apply_roles(config, roles)
        run_id = resume_run
        store.update("runs", run_id, {"status": "running", "ended_at": None})
    else:
        config = _simulation_config(app, flags, roles)
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
        notice = audit_notice(store, "simulate", config.judge, config.paper_exact, config.judge_both_orders)
        run_config = {**app.config.model_dump(mode="json"), "simulation_resolved": config.model_dump(mode="json"),
                      "excluded_eval_personas": excluded, "judge_audit": notice.audit_id}  # fmt: skip
        run_id = store.start_run(_command_line(), run_config, config.seed)
        trees.create_conversations(run_id, personas, config.turns)
        app.notify(notice.text, warning=notice.warning)
        if any(excluded.values()):
            app.say(f"kept out of sampling: {excluded['profile']} profiles and {excluded['personality']} "
                    f"personalities of the {config.eval_set} eval set")  # fmt: skip

    total = len(trees.conversations(run_id))
    backends = BackendPool(
        app.config, store=store, run_id=run_id, budget=Budget(max_calls=config.max_calls, max_tokens=config.max_tokens)
    )
    specs = {config.user.backend, config.inducer.backend, config.judge.backend, *(r.backend for r in config.responders)}
    summary = _run_with_progress(
        app, "simulate", run_id, backends, specs,
        lambda on_turn, on_done: run_conversations(trees, backends, config, run_id, on_turn, on_done),
    )  # fmt: skip
    result = {
        "run_id": run_id,
        "conversations": total,
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
        return
    status_line = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    click.echo(
        f"run {run_id}: {status_line}; {summary.turns_saved} turns saved, "
        f"{summary.unlabelled_turns} without a valid judge verdict"
    )
    for failure in summary.failures:
        click.echo(f"  failed: {failure}")
    if not summary.finished:
        click.echo(f"resume with: aloe simulate --resume {run_id}")


@cli.group()
def trees() -> None:
    """List, show and export conversation trees."""


@trees.command("list")
@click.option("--run", "run_id", help="Only this run's conversations.")
@pass_app
def trees_list(app: App, run_id: str | None) -> None:
    """Conversations with persona, turns and status."""
    from aloekit.graphs import TreeStore

    trees = TreeStore(app.store)
    rows = trees.conversations(run_id)
    if app.as_json:
        app.emit_json(
            [
                {
                    "id": c.id,
                    "key": trees.key(c),
                    "run_id": c.run_id,
                    "status": c.status,
                    "turns_done": c.turns_done,
                    "max_turns": c.max_turns,
                    "error": c.error,
                    "profile": c.persona.profile.text,
                    "personality": c.persona.personality.text,
                    "profile_id": c.persona.profile.id,
                    "personality_id": c.persona.personality.id,
                }
                for c in rows
            ]
        )
        return
    for c in rows:
        click.echo(f"{c.id}  {c.status:<10} {c.turns_done:>2}/{c.max_turns:<2}  {c.persona.profile.text[:70]}")


@trees.command("show")
@click.argument("conversation_id")
@pass_app
def trees_show(app: App, conversation_id: str) -> None:
    """A readable transcript with every candidate, its label and the branch that continued."""
    from aloekit.graphs import TreeStore

    store = TreeStore(app.store)
    conversation = store.get(conversation_id)
    tree = store.tree(conversation_id)
    if app.as_json:
        app.emit_json(tree.to_json())
        return
    click.echo(f"conversation {conversation_id} ({conversation.status}, {conversation.turns_done} turns)")
    click.echo(conversation.persona.describe())
    click.echo(tree.transcript())


@trees.command("export")
@click.argument("conversation_id")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "mermaid", "dot", "html"]), default="json", show_default=True
)
@click.option("--out", type=click.Path(path_type=Path), help="File to write (default: stdout).")
@pass_app
def trees_export(app: App, conversation_id: str, fmt: str, out: Path | None) -> None:
    """Export one tree as node-link JSON, Mermaid, Graphviz DOT, or a self-contained HTML page."""
    from aloekit.graphs import TreeStore

    if fmt == "html":
        from aloekit.viewer import tree_page

        rendered = tree_page(app.store, conversation_id, standalone=True)
        if rendered is None:
            raise AloeError(f"no conversation {conversation_id!r} in {app.store.path}")
        text = rendered[0]
    else:
        tree = TreeStore(app.store).tree(conversation_id)
        text = {"json": lambda: json.dumps(tree.to_json(), indent=1), "mermaid": tree.to_mermaid, "dot": tree.to_dot}[
            fmt
        ]()
    if out is None:
        click.echo(text)
    else:
        out.write_text(text, encoding="utf-8")
        app.say(f"wrote {out}")


@cli.group()
def graph() -> None:
    """The simulation state machine."""


@graph.command("show")
def graph_show() -> None:
    """Print the turn loop as Mermaid."""
    click.echo(generation_graph_mermaid())


def generation_graph_mermaid() -> str:
    """Mermaid of the generation graph (its shape does not depend on the roles, so placeholders serve)."""
    from aloekit.graphs import Responder, RoleSet, build_generation_graph

    placeholder: Any = None
    roles = RoleSet(
        user=placeholder,
        inducer=placeholder,
        judge=placeholder,
        responders=[Responder(placeholder, True), Responder(placeholder, False)],
    )
    return build_generation_graph(roles).get_graph().draw_mermaid()


# training ---------------------------------------------------------------------------------------------


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@cli.command("export")
@click.argument("kind", type=click.Choice(["sft", "dpo", "tree"]))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSONL file (train split).")
@click.option("--run", "run_ids", multiple=True, help="Only these runs (repeatable; default: every simulation run).")
@click.option(
    "--branch",
    type=click.Choice(["preferred", "rejected"]),
    default="preferred",
    show_default=True,
    help="SFT: train on the preferred replies, or the rejected ones (the paper's control).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.0,
    show_default=True,
    help="Share of conversations held out, written beside --out as NAME.val.jsonl.",
)
@click.option("--min-turns", type=int, default=1, show_default=True, help="Skip conversations with fewer turns.")
@click.option(
    "--whole-conversations",
    is_flag=True,
    help="SFT: one messages row per conversation, cut where it stops being coherent (default: one row per turn).",
)
@click.option("--require-agreement", is_flag=True, help="Only turns whose judge agreed with itself in both orders.")
@click.option("--eval-set", default="builtin", show_default=True, help="Eval set to report persona overlap against.")
@click.option("--hf-dataset", type=click.Path(path_type=Path), help="Also save a datasets.DatasetDict here.")
@click.option("--push-to-hub", "hub_repo", help="Also push the DatasetDict to this Hub repo (needs HF_TOKEN).")
@pass_app
def export(
    app: App,
    kind: str,
    out: Path,
    run_ids: tuple[str, ...],
    branch: str,
    val_fraction: float,
    min_turns: int,
    whole_conversations: bool,
    require_agreement: bool,
    eval_set: str,
    hf_dataset: Path | None,
    hub_repo: str | None,
) -> None:
    """Flatten stored conversation trees into SFT, DPO or flat-tree JSONL."""
    from aloekit.evaluation.task import eval_persona_ids
    from aloekit.graphs import TreeStore
    from aloekit.training import (
        FlattenReport,
        conversation_rows,
        dpo_rows,
        sft_rows,
        split_by_conversation,
        tree_rows,
    )

    if hub_repo and not os.environ.get("HF_TOKEN"):
        raise AloeError("--push-to-hub needs a Hugging Face token in HF_TOKEN")
    if not 0 <= val_fraction < 1:
        raise AloeError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    trees = TreeStore(app.store)
    conversations = [c for run in (run_ids or (None,)) for c in trees.conversations(run)]
    for run in run_ids:
        if app.store.get_run(run) is None:
            raise AloeError(f"no run {run!r} in {app.store.path}")
    conversations = [c for c in conversations if c.kind == "simulation"]
    # Rows name conversations by a key from (seed, position, persona), so a rerun exports the same bytes.
    keys = trees.export_keys(conversations)
    records = {keys[c.id]: trees.records(c.id) for c in conversations}
    report = FlattenReport()
    options = {"min_turns": min_turns, "require_agreement": require_agreement, "report": report}
    if kind == "sft":
        flatten = conversation_rows if whole_conversations else sft_rows
        rows = flatten(records, branch=branch, **options)
    elif kind == "dpo":
        rows = dpo_rows(records, **options)
    else:
        rows = tree_rows(trees.tree(c.id) for c in conversations if len(records[keys[c.id]]) >= min_turns)
    held_out = eval_persona_ids(eval_set)
    overlapping = [c.id for c in conversations if {c.persona.profile.id, c.persona.personality.id} & held_out]
    names = {*overlapping, *(keys[cid] for cid in overlapping)}  # tree rows keep database ids
    overlap_rows = sum(r["conversation_id"] in names for r in rows)
    if not rows:
        raise AloeError(
            f"nothing to export: {len(conversations)} conversations gave no {kind} rows "
            f"({report.unlabelled_turns} unlabelled turns, {report.identical_pairs} identical pairs, "
            f"{report.short_conversations} too short)"
        )
    train, val = split_by_conversation(rows, val_fraction, seed=app.config.seed)
    _write_jsonl(train, out)
    written = {"train": str(out), "train_rows": len(train)}
    if val:
        val_path = out.with_name(f"{out.stem}.val{out.suffix}")
        _write_jsonl(val, val_path)
        written |= {"validation": str(val_path), "validation_rows": len(val)}
    if hf_dataset or hub_repo:
        from datasets import Dataset, DatasetDict

        splits = {"train": Dataset.from_list(train)} | ({"validation": Dataset.from_list(val)} if val else {})
        dataset = DatasetDict(splits)
        if hf_dataset:
            dataset.save_to_disk(str(hf_dataset))
            written["hf_dataset"] = str(hf_dataset)
        if hub_repo:
            dataset.push_to_hub(hub_repo, token=os.environ["HF_TOKEN"])
            written["hub"] = hub_repo
    result = {
        "kind": kind,
        "conversations": len(conversations),
        **written,
        "skipped": {
            "unlabelled_turns": report.unlabelled_turns,
            "disagreeing_turns": report.disagreeing_turns,
            "identical_pairs": report.identical_pairs,
            "short_conversations": report.short_conversations,
            "cut_conversations": report.cut_conversations,
        },
        "eval_overlap": {"eval_set": eval_set, "conversations": len(overlapping), "rows": overlap_rows},
    }
    if overlap_rows:
        app.warn(f"warning: {overlap_rows} rows from {len(overlapping)} conversations use personas of the "
                 f"{eval_set} eval set: evaluating on it would measure memory, not adaptation")  # fmt: skip
    if app.as_json:
        app.emit_json(result)
        return
    click.echo(
        f"wrote {len(train)} {kind} rows to {out}" + (f" and {len(val)} to {written['validation']}" if val else "")
    )
    skipped = {k: v for k, v in result["skipped"].items() if v}
    if skipped:
        click.echo("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    if report.cut_conversations:
        click.echo(f"{report.cut_conversations} conversations were cut where they continued with another reply "
                   "(a whole-conversation row must show every reply its user answered)")  # fmt: skip


@cli.command("train")
@click.argument("method", type=click.Choice(["sft", "dpo"]))
@click.option(
    "--data", type=click.Path(path_type=Path), required=True, help="JSONL from aloe export, or --hf-dataset folder."
)
@click.option("--base", default="local:smollm2", show_default=True, help="local:smollm2 or hf:PATH.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the LoRA adapter.")
@click.option("--max-steps", type=int, help="Stop after N optimiser steps.")
@click.option("--epochs", type=float, help="Passes over the data (when --max-steps is not set).")
@click.option("--config", "train_config", type=click.Path(path_type=Path), help="YAML/TOML over the shipped defaults.")
@click.option("--init-adapter", type=click.Path(path_type=Path), help="Continue from this adapter (SFT, then DPO).")
@click.option("--beta", type=float, help="DPO beta (default 0.9, the paper's).")
@click.option("--max-length", type=int, help="Longest row in tokens; longer rows are dropped and counted.")
@click.option("--lora-r", type=int, help="LoRA rank.")
@click.option("--lora-alpha", type=int, help="LoRA alpha.")
@click.option("--lora-dropout", type=float, help="LoRA dropout.")
@click.option("--target-modules", help="Comma-separated module names, or all-linear.")
@click.option(
    "--trl",
    "trl_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any SFTConfig/DPOConfig field, e.g. --trl learning_rate=1e-4 (JSON values). Repeatable.",
)
@click.option("--overwrite", is_flag=True, help="Replace an adapter already in --out.")
@pass_app
def train_command(
    app: App,
    method: str,
    data: Path,
    base: str,
    out: Path,
    max_steps: int | None,
    epochs: float | None,
    train_config: Path | None,
    init_adapter: Path | None,
    beta: float | None,
    max_length: int | None,
    lora_r: int | None,
    lora_alpha: int | None,
    lora_dropout: float | None,
    target_modules: str | None,
    trl_options: tuple[str, ...],
    overwrite: bool,
) -> None:
    """LoRA-train METHOD (sft or dpo) with trl + peft; the adapter then works as the backend hf:BASE+OUT."""
    from aloekit.training import build_train_config, train
    from aloekit.training.progress import StepReporter

    trl: dict[str, Any] = {}
    for option in trl_options:
        key, sep, raw = option.partition("=")
        if not sep:
            raise AloeError(f"--trl expects KEY=VALUE, got {option!r}")
        try:
            trl[key.strip()] = json.loads(raw)
        except ValueError:
            trl[key.strip()] = raw
    modules = target_modules.split(",") if target_modules and target_modules != "all-linear" else target_modules
    lora = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target_modules": modules}
    config = build_train_config(
        method,
        train_config,
        data=data,
        base=base,
        out=out,
        max_steps=max_steps,
        epochs=epochs,
        init_adapter=init_adapter,
        beta=beta,
        max_length=max_length,
        overwrite=overwrite or None,
        seed=app.config.seed,
        lora={k: v for k, v in lora.items() if v is not None},
        trl=trl,
    )
    run_id = app.store.start_run(
        _command_line(),
        {**app.config.model_dump(mode="json"), "train": config.model_dump(mode="json")},
        app.config.seed,
    )
    progress = app.progress(f"train {method}", "{task.fields[note]}")
    with progress:
        task = progress.add_task("", total=None, note="loading")

        def report(step: int, total: int, logs: dict[str, Any]) -> None:
            loss = logs.get("loss")
            note = f"step {step}" + (f"  loss {float(loss):.4f}" if loss is not None else "")
            progress.update(task, completed=step, total=total or None, note=note)

        try:
            summary = train(
                config, callbacks=[StepReporter(report)], on_status=lambda text: progress.update(task, note=text)
            )
        except AloeError as exc:
            app.store.finish_run(run_id, "failed", str(exc))
            raise
    app.store.finish_run(run_id, "completed")
    if app.as_json:
        app.emit_json(summary)
        return
    click.echo(
        f"{method}: {summary['steps']} steps on {summary['rows']} rows in {summary['runtime_s']:.1f}s, "
        f"final loss {summary['final_loss']}"
    )
    click.echo(f"adapter: {out}  (use it as --model/--role backend {summary['adapter_spec']})")


# judge audit ------------------------------------------------------------------------------------------


@cli.group()
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
@click.option("--personas", type=int, default=8, show_default=True, help="Eval personas probed (two probes each).")
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), help="JSONL of reference preferences.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Personas probed at once.")
@click.option("--seed", "audit_seed", type=int, help="Seed (default: --seed).")
@click.option("--judge-both-orders", is_flag=True, default=None, help="simulate: as aloe simulate --judge-both-orders.")
@click.option("--paper-exact", is_flag=True, default=None, help="simulate: as aloe simulate --paper-exact.")
@pass_app
def judge_audit(
    app: App,
    stage: str,
    roles: tuple[str, ...],
    eval_set: str | None,
    personas: int,
    labels_path: Path | None,
    concurrency: int,
    audit_seed: int | None,
    judge_both_orders: bool | None,
    paper_exact: bool | None,
) -> None:
    """Known-answer probes from the eval personas: accuracy with a CI, position flips, invalid answers."""
    from dataclasses import asdict

    from aloekit.evaluation.audit import audit_config, read_labels, run_audit, save_audit

    section = app.config.evaluation if stage == "eval" else app.config.simulation
    assignments = {}
    for assignment in roles:
        role, sep, spec = assignment.partition("=")
        if not sep or not spec or role.strip() not in ("judge", "user", "generator"):
            raise AloeError(f"--role expects judge=SPEC, user=SPEC or generator=SPEC, got {assignment!r}")
        assignments[role.strip()] = spec.strip()
    if stage == "eval" and (judge_both_orders or paper_exact):
        raise AloeError("--judge-both-orders and --paper-exact describe the simulation judge: use --stage simulate")
    config = audit_config(stage, section, assignments, eval_set=eval_set, personas=personas, concurrency=concurrency,
                          seed=app.seed_for(audit_seed, section), both_orders=judge_both_orders,
                          paper_exact=paper_exact)  # fmt: skip
    labels = read_labels(labels_path) if labels_path else None

    async def audit(backends: BackendPool) -> tuple[str, Any]:
        for spec in sorted({config.judge.backend, config.user.backend, config.generator.backend}):
            await _ensure_loaded(app, backends, spec)
        with app.console.status("probing the judge") if not (app.quiet or app.as_json) else nullcontext():
            result = await run_audit(config, backends, labels)
        return save_audit(app.store, str(backends.run_id), result), result

    audit_id, result = _run_recorded(app, audit, {"audit": config.model_dump(mode="json")}, config.seed)
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


# evaluation -------------------------------------------------------------------------------------------


@cli.command("eval")
@click.option("--model", "model_spec", help="Backend spec of the model under test (e.g. local:smollm2+adapters/dpo).")
@click.option("--role", "roles", multiple=True, metavar="ROLE=SPEC", help="user=SPEC or judge=SPEC. Repeatable.")
@click.option(
    "--mode", type=click.Choice(["live", "replay"]), help="live (default): the user reacts; replay: stored user turns."
)
@click.option("--replay-run", help="replay mode: the run whose trees supply personas and user turns.")
@click.option("--eval-set", help="builtin (default, ours, not the paper's) or a folder with the paper's two files.")
@click.option("--personas", type=int, help="Only the first N personas.")
@click.option("--turns", type=int, help="Turns per conversation (K, default 10).")
@click.option("--concurrency", type=int, help="Conversations in progress at once.")
@click.option("--baseline", type=click.Choice(["blind", "oracle"]), help="oracle: tell the model the true persona.")
@click.option("--max-calls", type=int, help="Stop cleanly after this many model calls.")
@click.option("--max-tokens", type=int, help="Stop cleanly after this many tokens.")
@click.option("--seed", "eval_seed", type=int, help="Seed (default: --seed).")
@click.option("--resume", "resume_run", metavar="RUN", help="Continue the unfinished conversations of RUN.")
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
) -> None:
    """Run the ALOE benchmark: a simulated user chats with the model; a judge scores every reply 1-5."""
    from pydantic import ValidationError

    from aloekit.agents.backends import Budget
    from aloekit.evaluation import EvalConfig, create_eval_conversations, run_evaluation
    from aloekit.evaluation.audit import audit_notice
    from aloekit.evaluation.report import eval_config, format_value, run_results

    store = app.store
    replayed = None
    if resume_run:
        base = eval_config(store, resume_run)
        config = base.model_copy(update={"max_calls": max_calls, "max_tokens": max_tokens,
                                         "concurrency": concurrency or base.concurrency})  # fmt: skip
        run_id = resume_run
        store.update("runs", run_id, {"status": "running", "ended_at": None})
    else:
        if not model_spec:
            raise AloeError("eval needs --model SPEC (or --resume RUN)")
        flags = {"model": model_spec, "mode": mode, "replay_run": replay_run, "eval_set": eval_set,
                 "personas": personas, "turns": turns, "concurrency": concurrency, "baseline": baseline,
                 "max_calls": max_calls, "max_tokens": max_tokens,
                 "seed": app.seed_for(eval_seed, app.config.evaluation)}  # fmt: skip
        try:
            config = EvalConfig.model_validate(
                {**app.config.evaluation, **{k: v for k, v in flags.items() if v is not None}}
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            raise AloeError(f"eval config: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        config = _apply_roles(config, roles)
        notice = audit_notice(store, "eval", config.judge)
        run_config = {**app.config.model_dump(mode="json"), "eval_resolved": config.model_dump(mode="json"),
                      "judge_audit": notice.audit_id}  # fmt: skip
        run_id = store.start_run(_command_line(), run_config, config.seed)
        replayed = create_eval_conversations(store, run_id, config)
        app.notify(notice.text, warning=notice.warning)

    backends = BackendPool(
        app.config, store=store, run_id=run_id, budget=Budget(max_calls=config.max_calls, max_tokens=config.max_tokens)
    )
    specs = {config.model, config.judge.backend, *([config.user.backend] if config.mode == "live" else [])}
    summary = _run_with_progress(
        app, "eval", run_id, backends, specs,
        lambda on_turn, on_done: run_evaluation(store, backends, config, run_id, replayed, on_turn, on_done),
    )  # fmt: skip
    results = run_results(store, run_id, n_boot=0)  # point metrics only; `aloe report` adds the CIs
    m = results["metrics"]
    out = {
        "run_id": run_id, "statuses": summary.statuses, "turns_saved": summary.turns_saved, "unscored": m.unscored,
        "avg": m.avg, "ir": m.ir, "r2": m.r2, "al": m.al, "scored": m.scored, "failures": summary.failures,
        "judge_audit": results["audit_id"],
    }  # fmt: skip
    if app.as_json:
        app.emit_json(out)
        return
    status_line = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    click.echo(f"run {run_id} ({config.mode}): {status_line}; {sum(m.scored)} turns scored, {m.unscored} unscored")
    click.echo(f"AVG {format_value(m.avg)}  IR {format_value(m.ir)}  R2 {format_value(m.r2)}  AL(k) "
               + " ".join(f"{format_value(v, 2)} (n={n})" for v, n in zip(m.al, m.scored, strict=True)))  # fmt: skip
    for failure in summary.failures:
        click.echo(f"  failed: {failure}")
    if not summary.finished:
        click.echo(f"resume with: aloe eval --resume {run_id}")


@cli.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@pass_app
def compare_command(app: App, run_a: str, run_b: str) -> None:
    """Compare two evaluation runs on their shared personas (B minus A): paired bootstrap and Wilcoxon."""
    from aloekit.evaluation.report import comparison_dict, comparison_lines, run_results

    comparison = comparison_dict(run_results(app.store, run_a, n_boot=0), run_results(app.store, run_b, n_boot=0))
    if app.as_json:
        app.emit_json(comparison)
        return
    click.echo(f"{run_b} minus {run_a}")
    click.echo("\n".join(comparison_lines(comparison)))


@cli.command("report")
@click.argument("run_ids", nargs=-1, required=True)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for report.md, summary.json, al_curve.png."
)
@click.option("--note", help="A line shown at the top of the report.")
@pass_app
def report_command(app: App, run_ids: tuple[str, ...], out: Path, note: str | None) -> None:
    """Write report.md, summary.json and al_curve.png for one or more evaluation runs."""
    from aloekit.evaluation import write_report

    summary = write_report(app.store, list(run_ids), out, note=note)
    if app.as_json:
        app.emit_json(summary)
        return
    click.echo(f"wrote {out / 'report.md'}, {out / 'summary.json'} and {out / 'al_curve.png'}")


# viewer -----------------------------------------------------------------------------------------------


@cli.command()
@click.option("--db", "view_db", type=click.Path(path_type=Path), help="Database to show (default: --db / ./aloe.db).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option(
    "--allow-remote", is_flag=True, help="Allow a non-loopback --host (anyone who can reach it sees the data)."
)
@pass_app
def view(app: App, view_db: Path | None, host: str, port: int, allow_remote: bool) -> None:
    """Browse runs, conversation trees and evaluations in a local, read-only web page."""
    from aloekit.viewer import build_server

    server = build_server(view_db or app.config.db, host, port, allow_remote)
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"aloekit viewer on http://{bound_host}:{bound_port}/ (read-only; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# demo -------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("aloe-demo"), show_default=True)
@click.option("--quick", is_flag=True, help="Smaller run (under 10 minutes on 2 cores).")
@pass_app
def demo(app: App, out: Path, quick: bool) -> None:
    """Run the whole ALOE pipeline on the embedded SmolLM2: personas, trees, training, evaluation, report."""
    from aloekit.demo import run_demo

    result = run_demo(out, quick=quick, say=app.say if not app.as_json else lambda text: None)
    if app.as_json:
        app.emit_json(result)


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
