"""What every subcommand shares: the :class:`App` object, the error boundary, exit statuses, run lifetimes."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shlex
import signal
import sqlite3
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aloekit.agents.backends import BackendPool, TransformersChatClient
from aloekit.config import MAX_SEED, AloeConfig, one_line
from aloekit.cpu_thread import run_off_loop
from aloekit.errors import AloeError, Terminated, first_leaf, run_async, stop_signals
from aloekit.hardware import HARDWARE_ENTRIES
from aloekit.limits import MAX_CONCURRENCY, MAX_CONVERSATIONS, MAX_TURNS
from aloekit.secrets import RedactingFilter, redact, redacted_output, register_url_secrets
from aloekit.serialize import to_json
from aloekit.store import RunLease, Store, run_end_state

# Exit statuses shared by every command (the README's table).
EXIT_OK = 0
"""Done: every conversation complete, or stopped cleanly by a --budget-calls/--budget-tokens budget."""
EXIT_ERROR = 1
"""Bad input, configuration or backend, or an unexpected failure (its traceback goes to a log file)."""
EXIT_USAGE = 2
"""Unknown command or flag, or a flag value out of range."""
EXIT_FAILED_CONVERSATIONS = 3
"""The run finished, but some conversations failed (``--resume RUN`` retries them)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C: the run is marked ``interrupted`` and can be resumed."""
EXIT_TERMINATED = 143
"""SIGTERM: as Ctrl-C."""
EXIT_HUNG_UP = 129
"""SIGHUP (the terminal was closed): as Ctrl-C."""


class FiniteFloatRange(click.FloatRange):
    """click's ``FloatRange`` that also refuses nan and infinities: nan passes every comparison, and an open
    upper end lets inf through, which later failed with exit 1 (or a traceback) instead of a usage error."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The number, or a usage error naming the flag."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


# Flag ranges are the settings' own, so a value out of range is a usage error (exit 2) before anything runs.
COUNT = click.IntRange(1, MAX_CONVERSATIONS)
TURNS = click.IntRange(1, MAX_TURNS)
CONCURRENCY = click.IntRange(1, MAX_CONCURRENCY)
NON_NEGATIVE = click.IntRange(0, MAX_CONVERSATIONS)
TEMPERATURE = FiniteFloatRange(0, 10)
PORT = click.IntRange(0, 65535)
SEED = click.IntRange(0, MAX_SEED)


@dataclass
class App:
    """What every subcommand shares: the resolved config, output mode and (lazily) the store."""

    config: AloeConfig
    quiet: bool = False
    as_json: bool = False
    cli_seed: int | None = None
    """``aloe --seed N``: wins over seeds in the config file's sections."""
    config_path: Path | None = None
    """The config file in use (``--config`` or ``ALOE_CONFIG``), if any."""
    global_flags: dict[str, Any] = field(default_factory=dict)
    """The global flags that override config fields (``--db``, ``--seed``)."""
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
            self.console.print(redact(text))  # before rich wraps a long spec across lines, out of the streams' reach

    def warn(self, text: str) -> None:
        """A line on stderr that matters for trusting results: shown even with --quiet or --json."""
        click.echo(text, err=True)

    def notify(self, text: str, warning: bool) -> None:
        """:meth:`warn` for a warning, :meth:`say` for anything else."""
        if warning:
            self.warn(text)
        else:
            self.say(text)

    def seed_for(self, flag: int | None, section: dict[str, Any]) -> Any:
        """A stage's seed: its own --seed, else ``aloe --seed``, else its config section's, else the top-level one.
        The section's is passed on as written, for the stage's settings to check with its other fields."""
        for candidate in (flag, self.cli_seed, section.get("seed")):
            if candidate is not None:
                return candidate
        return self.config.seed

    def section_error(self, section: str, exc: ValidationError, typed: Collection[str] = ()) -> AloeError:
        """One line for a ``[section]`` of the config that does not validate, naming where the bad value came
        from (a flag the user ``typed``, an ``ALOE_*`` variable, the config file), as the config's other errors
        do; an error about the settings together (no one field) names the section alone."""
        from aloekit.config import config_layers, format_loc, source_of

        err = exc.errors()[0]
        loc = tuple(err["loc"])
        if not loc:
            return AloeError(one_line(f"{section} settings: {err['msg']}"))
        if loc[0] in typed:
            source = f"flag --{str(loc[0]).replace('_', '-')}"
        else:
            source = source_of((section, *loc), config_layers(self.config_path)) or "defaults"
            source = f"config {source}" if source.startswith("file ") else source
        return AloeError(one_line(f"{source}: field {section}.{format_loc(loc)}: {err['msg']}"))

    def typed_flags(self, flags: Mapping[str, Any], stage_seed: int | None) -> set[str]:
        """The settings in a command's ``flags`` that the user typed: ``seed`` only when a --seed was given (else
        it is the config's own, passed on by :meth:`seed_for`)."""
        typed = {key for key, value in flags.items() if value is not None and key != "seed"}
        return typed | ({"seed"} if stage_seed is not None or self.cli_seed is not None else set())

    def progress(self, label: str, note: str) -> Progress:
        """A progress bar on stderr (off with --quiet/--json): label, bar, done/total, note, elapsed."""
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(note), TimeElapsedColumn())
        return Progress(*columns, console=self.console, disable=self.quiet or self.as_json)

    def emit_json(self, data: Any) -> None:
        """Machine-readable result on stdout."""
        click.echo(to_json(data, indent=2, default=str))


pass_app = click.make_pass_decorator(App)


def budget_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--budget-calls``/``--budget-tokens`` (a run's budget), passed on as ``max_calls``/``max_tokens``.

    ``--max-calls``/``--max-tokens`` still work here as deprecated aliases, with a warning: elsewhere
    ``--max-tokens`` is one reply's limit, and one flag name should not mean two things.
    """

    @functools.wraps(command)
    def with_budget(*args: Any, budget_calls: int | None, budget_tokens: int | None, old_max_calls: int | None,
                    old_max_tokens: int | None, **kwargs: Any) -> Any:  # fmt: skip
        kwargs["max_calls"] = _renamed(budget_calls, old_max_calls, "--max-calls", "--budget-calls")
        kwargs["max_tokens"] = _renamed(budget_tokens, old_max_tokens, "--max-tokens", "--budget-tokens")
        return command(*args, **kwargs)

    options = [
        click.option("--budget-calls", type=COUNT, help="Stop cleanly (resumable) after this many model calls."),
        click.option("--budget-tokens", type=COUNT, help="Stop cleanly (resumable) after this many tokens."),
        click.option("--max-calls", "old_max_calls", type=COUNT, hidden=True),
        click.option("--max-tokens", "old_max_tokens", type=COUNT, hidden=True),
    ]
    for option in reversed(options):
        with_budget = option(with_budget)
    return with_budget


def _renamed(value: int | None, old_value: int | None, old: str, new: str) -> int | None:
    if old_value is None:
        return value
    click.echo(f"warning: {old} is deprecated for a run budget, use {new}", err=True)
    return value if value is not None else old_value


# The error boundary -----------------------------------------------------------------------------------


def error_line(text: str) -> str:
    """One redacted line: what every failure is reduced to on stderr."""
    return redact(one_line(str(text)))


def crash_log_dir() -> Path:
    """Where unexpected tracebacks are written: ALOE_LOG_DIR, else the user's cache folder."""
    if os.environ.get("ALOE_LOG_DIR"):
        return Path(os.environ["ALOE_LOG_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aloekit" / "logs"


def write_crash_log(exc: BaseException) -> Path:
    """Write the redacted traceback of an unexpected exception to a new log file; return its path."""
    text = redact("".join(traceback.format_exception(exc)))
    name = datetime.now(UTC).strftime("crash-%Y%m%d-%H%M%S-") + f"{os.getpid()}.log"
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(redact(f"aloe {shlex.join(sys.argv[1:])}\n{text}"), encoding="utf-8",
                            errors="backslashreplace")  # fmt: skip
            return path
        except OSError:
            continue
    raise OSError("no writable folder for the crash log")


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text: bytes that are not UTF-8 arrive from the shell or a pipe as
    lone surrogates, which SQLite, JSON and HTTP clients then refuse with a traceback."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


class AloeGroup(click.Group):
    """The one error boundary: every failure becomes one ``error:`` line and an exit status from the table above."""

    verbose = 0

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        """Run the CLI; map errors, Ctrl-C, SIGTERM and SIGHUP to one line and an exit status."""
        given = args[0] if args else kwargs.get("args")  # click's CliRunner passes args= by keyword
        arguments = [str(arg) for arg in (given if given is not None else sys.argv[1:])]
        for arg in arguments:
            register_url_secrets(arg)  # a key typed into a spec URL is redacted everywhere from here on
        if undecodable := [arg for arg in arguments if not is_text(arg)]:  # bytes the shell passed through
            try:  # the shell's bytes as such (caf\xe9); any other lone surrogate escaped
                shown = undecodable[0].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                shown = undecodable[0].encode("utf-8", "backslashreplace").decode("utf-8")
            click.echo(f"error: argument '{shown}' is not valid UTF-8 text (rename the file or retype it)", err=True)
            if standalone_mode:
                sys.exit(EXIT_USAGE)
            return EXIT_USAGE
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # only the main thread can take signals
            previous = {signum: signal.signal(signum, _raise_terminated) for signum in stop_signals()}
        try:
            with redacted_output():
                code = self._main(*args, **kwargs)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if standalone_mode:
            sys.exit(code)
        return code

    def _main(self, *args: Any, **kwargs: Any) -> int:
        try:
            try:
                result = super().main(*args, standalone_mode=False, **kwargs)
            except BaseExceptionGroup as group:  # a task group's failure: report what went wrong inside it
                raise first_leaf(group) from group
            return result if isinstance(result, int) else EXIT_OK
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"error: {error_line(exc.format_message())}{hint}", err=True)
            return EXIT_USAGE
        except click.ClickException as exc:
            click.echo(f"error: {error_line(exc.format_message())}", err=True)
            return exc.exit_code
        except AloeError as exc:
            click.echo(f"error: {error_line(str(exc))}", err=True)
            return EXIT_ERROR
        except ValidationError as exc:  # a settings object built from flags or files: name the field
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            click.echo(f"error: {exc.title}: field {where}: {error_line(first['msg'])}{more}", err=True)
            return EXIT_ERROR
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, read-only, damaged
            hint = " (another process may hold it; try again)" if "locked" in str(exc) or "busy" in str(exc) else ""
            click.echo(f"error: database: {error_line(str(exc))}{hint}", err=True)
            return EXIT_ERROR
        except (Terminated, click.Abort, KeyboardInterrupt) as exc:
            signalled = exc if isinstance(exc, Terminated) else exc.__cause__
            if not isinstance(signalled, Terminated):
                click.echo("interrupted", err=True)
                return EXIT_INTERRUPTED
            if signalled.signum == signal.SIGTERM:
                click.echo("terminated", err=True)
                return EXIT_TERMINATED
            click.echo(f"terminated ({signalled.signal_name})", err=True)
            return EXIT_HUNG_UP
        except Exception as exc:  # a bug: one line here, the traceback in a file
            try:
                where = f"the traceback is in {write_crash_log(exc)}"
            except OSError:
                where = "no log folder was writable"
            if self.verbose:
                click.echo(redact("".join(traceback.format_exception(exc))), err=True)
            click.echo(f"error: unexpected {type(exc).__name__}: {error_line(str(exc))} ({where}; "
                       "please report it)", err=True)  # fmt: skip
            return EXIT_ERROR


def setup_logging(verbose: int) -> None:
    """Log to stderr through the redacting filter; quiet third-party chatter unless -vv."""
    AloeGroup.verbose = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level, handlers=[handler], format="%(name)s: %(message)s", force=True)
    if verbose < 2:  # HTTP client chatter is only useful when debugging
        for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "autogen_core", "autogen_ext"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    if verbose == 0:
        quiet_hugging_face()
        # A dying continuous batching thread logs its traceback there; aloekit names its error in one line.
        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)
        # trl still passes transformers' renamed gradient_checkpointing options; that is for them to fix.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")


def quiet_hugging_face() -> None:
    """Silence transformers' warnings and the Hugging Face progress bars, unless the user's environment says.

    Through the environment, so start-up does not import transformers; libraries already imported (aloekit
    called from a notebook or a preloaded process) read it only at import, so they are told directly.
    """
    switches = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
    ours = {name for name, value in switches.items() if os.environ.setdefault(name, value) == value}
    if "TRANSFORMERS_VERBOSITY" in ours and "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()
    if "HF_HUB_DISABLE_PROGRESS_BARS" in ours and "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" in ours and "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def import_plugins(modules: list[str], folder: Path) -> None:
    """Import each plugin module (which registers roles or backends) from ``folder`` first, failing in one line.

    Plugins named in a config file resolve next to that file; ``--plugin`` ones next to where aloe runs.
    """
    import importlib

    if modules and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise AloeError(f"plugin {name!r} could not be imported (looked in {folder} first): "
                            f"{type(exc).__name__}: {exc}") from None  # fmt: skip


def check_backend_overrides(config: AloeConfig, config_path: Path | None) -> None:
    """Each ``[backends."SPEC"]`` table must name a spec of a registered backend (checked once plugins have
    registered theirs): an override under a mistyped prefix would otherwise apply to nothing, silently."""
    from aloekit.agents.backends import parse_spec
    from aloekit.config import config_layers, source_of
    from aloekit.errors import SpecError

    for spec in config.backends:
        try:
            if parse_spec(spec).text != spec:  # a spec is looked up as written: " local:x" would match none
                raise SpecError("spaces around the spec: no role's spec would match it")
        except SpecError as exc:  # named as the config's other errors: the file, or the variable that set it
            source = source_of(("backends", spec), config_layers(config_path)) or "config"
            raise AloeError(one_line(f"{source.removeprefix('file ')}: backends[{spec!r}]: {exc}")) from None


# Output text ------------------------------------------------------------------------------------------


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    """Rows as JSON lines."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# Runs -------------------------------------------------------------------------------------------------


def command_line() -> str:
    """The command as typed, for the run record (``python -m aloekit.training ...`` as such, e.g. under
    ``accelerate launch``)."""
    program = (
        ["python", "-m", "aloekit.training"]
        if Path(sys.argv[0]).parts[-2:] == ("training", "__main__.py")
        else ["aloe"]
    )
    return shlex.join([*program, *sys.argv[1:]])


@contextmanager
def run_lifetime(store: Store, run_id: str) -> Iterator[RunLease]:
    """Hold the run's lease while working on it, and leave the run in a state whatever happens.

    An error marks it ``failed`` with its reason, Ctrl-C or SIGTERM ``interrupted``; conversations in
    progress become ``incomplete`` so ``--resume`` continues them. The caller marks a normal end.
    """
    with RunLease(store, run_id) as lease:
        try:
            yield lease
        except BaseException as exc:
            status, reason = run_end_state(exc)
            for _ in range(3):  # the database may stay locked by another process for a while
                try:
                    store.finish_run(run_id, status, reason)
                    store.settle_conversations(run_id)
                    break
                except sqlite3.OperationalError:
                    continue  # each try waits the busy timeout; then the original error is what matters
            raise


async def ensure_loaded(app: App, pool: BackendPool, spec: str) -> None:
    """Load an in-process model before the clock starts, with a status line (the first load converts it)."""
    inner = pool.inner(spec)
    if isinstance(inner, TransformersChatClient) and not inner.loaded:
        with app.console.status(redact(f"loading {spec} (the first use converts the model, later loads take seconds)")):
            await run_off_loop(inner, inner.load)


def record_loaded_settings(store: Store, run_id: str, pool: BackendPool, specs: Iterable[str]) -> None:
    """Make the run config's ``hardware`` record say what each loaded in-process model computes with: the
    record is written before loading, and a load can fall back (packed blocks that cannot be used decode in
    float). On a resume those entries say what the latest invocation loaded, the device entries what the
    first ran on."""
    config = store.run_config(run_id)
    hardware = config.get("hardware")
    if not isinstance(hardware, dict):  # nothing in-process, or a damaged row: nothing to correct
        return
    changed = False
    for spec in specs:
        inner = pool.inner(spec)
        if not isinstance(inner, TransformersChatClient) or not inner.loaded:
            continue
        computed = inner.compute_settings()
        for setting, name in HARDWARE_ENTRIES.items():
            entry = hardware.get(name)
            if not isinstance(entry, dict):
                entry = hardware[name] = {}
            changed |= entry.get(spec) != (value := computed.get(setting))
            if value is None:  # a setting packed weights have, where they fell back to float
                entry.pop(spec, None)
            else:
                entry[spec] = value
    if changed:
        store.update("runs", run_id, {"config": json.dumps(config, sort_keys=True)})


def run_recorded(
    app: App,
    coro_factory: Callable[[BackendPool], Awaitable[Any]],
    extra_config: dict[str, Any] | None = None,
    seed: int | None = None,
    specs: Iterable[str] = (),
) -> Any:
    """Run ``coro_factory(pool)`` as a recorded run: config (plus ``extra_config``), versions, seed and
    status land in the store; the run's id is ``pool.run_id``. ``specs`` are checked before the run row."""
    check_run_inputs(app, specs)
    store = app.store
    config = {**app.config.model_dump(mode="json"), **(extra_config or {})}
    run_id = store.start_run(command_line(), config, app.config.seed if seed is None else seed)
    pool = BackendPool(app.config, store=store, run_id=run_id)

    async def main() -> Any:
        try:
            return await coro_factory(pool)
        finally:
            await pool.aclose()

    with run_lifetime(store, run_id):
        result = run_async(main())
    store.finish_run(run_id, "completed")
    return result


def refuse_on_resume(given: dict[str, Any]) -> None:
    """``--resume`` continues a run as it was configured: flags that would change it are an error, not ignored."""
    given_flags = [flag for flag, value in given.items() if value not in (None, False, ())]
    if given_flags:
        raise AloeError(f"--resume continues a run as it was configured: leave out {', '.join(given_flags)} (only "
                        "--concurrency and the budgets apply; start a new run to change the others)")  # fmt: skip


def refuse_changed_files(store: Store, run_id: str, hardware: dict[str, Any] | None) -> None:
    """A resumed run continues with the models it started with: an in-process model whose files changed since
    (retrained or replaced in place) would mix two models' answers in one run."""
    from aloekit.hardware import recorded_files

    started, now = recorded_files(store.run_config(run_id)), recorded_files({"hardware": hardware})
    changed = sorted(spec for spec, files in started.items() if spec in now and now[spec] != files)
    if changed:
        raise AloeError(f"run {run_id}: the files of {', '.join(changed)} changed since it started (retrained or "
                        "replaced): resuming would mix two models' answers in one run; start a new run")  # fmt: skip


def check_run_inputs(app: App, specs: Iterable[str], *checks: Callable[[], object]) -> None:
    """Validate backend specs (and ``checks``) before a run row is written, so bad input leaves no run behind."""
    from aloekit.agents.backends import check_spec

    for spec in sorted(specs):
        check_spec(spec, app.config.backend_settings(spec))
    for check in checks:
        check()


def apply_roles(config: Any, roles: tuple[str, ...]) -> Any:
    """Apply ``--role ROLE=SPEC`` assignments through the config's own ``with_backend``."""
    for assignment in roles:
        role, sep, spec = assignment.partition("=")
        if not sep or not spec:
            raise AloeError(f"--role expects ROLE=SPEC, got {assignment!r}")
        config = config.with_backend(role.strip(), spec.strip())
    return config


def run_with_progress(
    app: App, label: str, run_id: str, backends: BackendPool, specs: set[str],
    run: Callable[[Callable[[str, int], None], Callable[[str, str], None]], Awaitable[Any]],
) -> Any:  # fmt: skip
    """Shared by simulate and eval: load in-process models, show progress, run, record how the run ended.

    The caller holds :func:`run_lifetime`. A run whose every conversation failed is ``failed``; one
    with work left (a budget, or some failures) is ``incomplete``.
    """
    from aloekit.graphs import TreeStore
    from aloekit.graphs.storage import UNFINISHED

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
        try:
            for spec in sorted(specs):
                await ensure_loaded(app, backends, spec)
            record_loaded_settings(store, run_id, backends, specs)
            with app.progress(f"{label} {{task.fields[run]}}", "{task.fields[stats]}") as progress:
                done = total - len(trees.conversations(run_id, statuses=UNFINISHED))
                task = progress.add_task("", total=total, completed=done, run=run_id, stats=stats())

                def on_turn(cid: str, turn: int) -> None:
                    counts["turns"] += 1
                    progress.update(task, stats=stats())

                def on_done(cid: str, status: str) -> None:
                    counts["failed"] += status == "failed"
                    progress.update(task, advance=1 if status == "complete" else 0, stats=stats())

                return await run(on_turn, on_done)
        finally:
            await backends.aclose()

    summary = run_async(main())
    failed = summary.statuses.get("failed", 0)
    if summary.finished:
        store.finish_run(run_id, "completed")
    elif failed and failed == sum(summary.statuses.values()):
        store.finish_run(run_id, "failed", error_line(f"every conversation failed; first: {summary.failures[0]}")
                         if summary.failures else "every conversation failed")  # fmt: skip
    else:
        store.finish_run(run_id, "incomplete")
    return summary


def run_exit_status(statuses: dict[str, int]) -> int:
    """0 when no conversation failed, else :data:`EXIT_FAILED_CONVERSATIONS`."""
    return EXIT_FAILED_CONVERSATIONS if statuses.get("failed") else EXIT_OK
