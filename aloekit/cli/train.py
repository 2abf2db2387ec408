"""``aloe train sft|dpo|grpo``: LoRA training with trl + peft, offline on exported trees or online (GRPO)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from aloekit.cli.app import (
    COUNT,
    TURNS,
    App,
    FiniteFloatRange,
    apply_roles,
    check_run_inputs,
    command_line,
    pass_app,
    run_lifetime,
)
from aloekit.cpu_thread import as_cpu_thread
from aloekit.errors import AloeError
from aloekit.limits import MAX_CONVERSATIONS, MIN_MAX_LENGTH


def parse_trl_options(trl_options: tuple[str, ...]) -> dict[str, Any]:
    """``--trl KEY=VALUE`` pairs, values read as JSON where they parse."""
    trl: dict[str, Any] = {}
    for option in trl_options:
        key, sep, raw = option.partition("=")
        if not sep:
            raise AloeError(f"--trl expects KEY=VALUE, got {option!r}")
        try:
            trl[key.strip()] = json.loads(raw)
        except ValueError:
            trl[key.strip()] = raw
    return trl


@click.group("train")
def train_group() -> None:
    """LoRA training with trl + peft: sft and dpo on exported trees, grpo online against the simulated user."""


OFFLINE_OPTIONS = (
    click.option(
        "--data", type=click.Path(path_type=Path), required=True, help="JSONL from aloe export, or --hf-dataset folder."
    ),
    click.option("--base", default="local:smollm2", show_default=True, help="local:smollm2 or hf:PATH."),
    click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the LoRA adapter."),
    click.option("--max-steps", type=COUNT, help="Stop after N optimiser steps."),
    click.option(
        "--epochs", type=FiniteFloatRange(0, 1e6, min_open=True), help="Passes over the data (unless --max-steps)."
    ),
    click.option(
        "--config", "train_config", type=click.Path(path_type=Path), help="YAML/TOML over the shipped defaults."
    ),
    click.option("--init-adapter", type=click.Path(path_type=Path), help="Continue from this adapter (SFT, then DPO)."),
    click.option("--beta", type=FiniteFloatRange(0, min_open=True), help="DPO beta (default 0.9, the paper's)."),
    click.option(
        "--max-length",
        type=click.IntRange(MIN_MAX_LENGTH, MAX_CONVERSATIONS),
        help="Longest row in tokens; longer rows are dropped and counted.",
    ),  # fmt: skip
    click.option(
        "--batch-size",
        metavar="N|auto",
        help="Rows per device per step; auto (default): on CUDA the largest that fits from 32 down, on CPU 2.",
    ),  # fmt: skip
    click.option("--lora-r", type=COUNT, help="LoRA rank."),
    click.option("--lora-alpha", type=COUNT, help="LoRA alpha."),
    click.option("--lora-dropout", type=FiniteFloatRange(0, 1, max_open=True), help="LoRA dropout."),
    click.option("--target-modules", help="Comma-separated module names, or all-linear."),
    click.option(
        "--trl",
        "trl_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Any SFTConfig/DPOConfig field, e.g. --trl learning_rate=1e-4 (JSON values). Repeatable.",
    ),  # fmt: skip
    click.option("--overwrite", is_flag=True, help="Replace an adapter already in --out."),
)


def launched_processes() -> tuple[int, int]:
    """(This process's rank, how many were launched): (0, 1) unless under ``accelerate launch``/torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def step_progress(
    app: App, label: str, key: str, shown: str, digits: int
) -> Iterator[tuple[Any, Callable[[str], None]]]:
    """A progress bar for a trl run: ``(callback, say)``, the callback showing each step's logged ``key``."""
    from aloekit.training.progress import StepReporter

    with app.progress(label, "{task.fields[note]}") as progress:
        task = progress.add_task("", total=None, note="loading")

        def report(step: int, total: int, logs: dict[str, Any]) -> None:
            value = logs.get(key)
            note = f"step {step}" + (f"  {shown} {float(value):.{digits}f}" if value is not None else "")
            progress.update(task, completed=step, total=total or None, note=note)

        yield StepReporter(report), lambda text: progress.update(task, note=text)


def offline_command(method: str, what: str) -> click.Command:
    """``aloe train sft`` or ``aloe train dpo``: the same options, one trl trainer each."""

    def command(app: App, **options: Any) -> None:
        train_offline(app, method, **options)

    for decorate in reversed(OFFLINE_OPTIONS):
        command = decorate(command)
    usage = f"{what} The adapter then works as the backend BASE+OUT (local:smollm2+OUT, hf:PATH+OUT)."
    return click.command(method, help=usage)(pass_app(command))


def train_offline(
    app: App,
    method: str,
    *,
    data: Path,
    base: str,
    out: Path,
    max_steps: int | None,
    epochs: float | None,
    train_config: Path | None,
    init_adapter: Path | None,
    beta: float | None,
    max_length: int | None,
    batch_size: str | None,
    lora_r: int | None,
    lora_alpha: int | None,
    lora_dropout: float | None,
    target_modules: str | None,
    trl_options: tuple[str, ...],
    overwrite: bool,
) -> None:
    """LoRA-train ``method`` (sft or dpo) on exported rows with trl + peft."""
    from aloekit.training import build_train_config, check_train_inputs, train

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
        batch_size=batch_size,
        overwrite=overwrite or None,
        seed=app.cli_seed,  # `aloe --seed` wins over the train config's; the top-level seed only fills in
        default_seed=app.config.seed,
        lora={k: v for k, v in lora.items() if v is not None},
        trl=parse_trl_options(trl_options),
    )
    check_train_inputs(config)  # the base, --out, --init-adapter and the data, before the run row
    rank, world = launched_processes()
    if rank != 0:  # under accelerate launch: the main process records the run and shows progress
        train(config)
        return
    run_id = app.store.start_run(
        command_line(),
        {**app.config.model_dump(mode="json"), "train": config.model_dump(mode="json"), "world_size": world},
        config.seed,  # the one it trains with
    )
    with run_lifetime(app.store, run_id), step_progress(app, f"train {method}", "loss", "loss", 4) as (steps, say):
        summary = train(config, callbacks=[steps], on_status=say)
    app.store.finish_run(run_id, "completed")
    if app.as_json:
        app.emit_json(summary)
        return
    click.echo(
        f"{method}: {summary['steps']} steps on {summary['rows']} rows in {summary['runtime_s']:.1f}s, "
        f"final loss {summary['final_loss']}"
    )
    click.echo(f"adapter: {out}  (use it as --model/--role backend {summary['adapter_spec']})")


@click.command("grpo")
@click.option("--base", default="local:smollm2", show_default=True, help="Policy base: local:smollm2 or hf:PATH.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the LoRA adapter.")
@click.option("--personas", type=COUNT, help="Conversations running at once (default 4).")
@click.option("--turns", type=TURNS, help="Turns per conversation (default 3).")
@click.option("--group", type=click.IntRange(2, 64), help="Replies sampled per turn, G (default 4).")
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="ROLE=SPEC",
    help="user=SPEC, judge=SPEC, or profile=SPEC (adds RLPA's profile-inference reward). Repeatable.",
)
@click.option("--profile-weight", type=FiniteFloatRange(min=0), help="Weight of the profile reward (default 1).")
@click.option("--max-steps", type=COUNT, help="Optimiser steps (default 20); each is one turn of every conversation.")
@click.option("--max-completion-length", type=COUNT, help="Longest sampled reply in tokens (default 64).")
@click.option("--init-adapter", type=click.Path(path_type=Path), help="Continue from this adapter (e.g. DPO's).")
@click.option("--config", "train_config", type=click.Path(path_type=Path), help="YAML/TOML of GRPO settings.")
@click.option(
    "--trl", "trl_options", multiple=True, metavar="KEY=VALUE",
    help="Any other GRPOConfig field, e.g. --trl learning_rate=1e-5 (JSON values). Repeatable.",
)  # fmt: skip
@click.option("--save-steps", type=COUNT, help="Checkpoint every N steps into --out/checkpoint-N (for --resume).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--overwrite", is_flag=True, help="Replace an adapter already in --out.")
@pass_app
def grpo_command(
    app: App,
    base: str,
    out: Path,
    personas: int | None,
    turns: int | None,
    group: int | None,
    roles: tuple[str, ...],
    profile_weight: float | None,
    max_steps: int | None,
    max_completion_length: int | None,
    init_adapter: Path | None,
    train_config: Path | None,
    trl_options: tuple[str, ...],
    save_steps: int | None,
    resume: bool,
    overwrite: bool,
) -> None:
    """LoRA GRPO against the simulated user: per turn G sampled replies, judged, the best continues."""
    # The trainer, its rollouts' in-process models and their loading all stay on this (the main) thread: one
    # thread for torch's CPU work (aloekit.cpu_thread), and the one Ctrl-C reaches.
    click.get_current_context().with_resource(as_cpu_thread())
    from pydantic import ValidationError

    from aloekit.agents.backends import BackendPool
    from aloekit.config import format_loc, read_config_file, resolve_section
    from aloekit.evaluation.audit import audit_notice, config_judge_kind
    from aloekit.evaluation.report import format_value
    from aloekit.graphs import TreeStore
    from aloekit.graphs.simulate import check_role
    from aloekit.personas.pool import PersonaPool
    from aloekit.training.grpo import (
        ROLE_ANSWERS,
        GRPOSettings,
        build_environments,
        check_resumable,
        grpo_args,
        last_checkpoint,
        resume_key,
        train_grpo,
        training_personas,
    )
    from aloekit.training.train import check_base, check_init_adapter, check_output_dir

    if launched_processes()[1] > 1:  # each process would start its own run, simulated users and judge calls
        raise AloeError("aloe train grpo runs in one process: start it without accelerate launch / torchrun")
    from_file = read_config_file(Path(train_config), "train config") if train_config is not None else {}
    flags = {"base": base, "out": out, "personas": personas, "turns": turns, "group": group, "max_steps": max_steps,
             "max_completion_length": max_completion_length, "init_adapter": init_adapter,
             "overwrite": overwrite or None, "seed": app.seed_for(None, from_file), "save_steps": save_steps,
             "resume": resume or None, "profile_weight": profile_weight,
             "trl": parse_trl_options(trl_options) or None}  # fmt: skip
    try:
        settings = resolve_section(GRPOSettings, from_file, {k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise AloeError(f"grpo settings: field {format_loc(err['loc'])}: {err['msg']}") from None
    settings = apply_roles(settings, roles)
    check_base(settings.base)
    check_output_dir(settings.out, settings.overwrite)
    grpo_args(settings)  # the trl options, refused now rather than after the run row
    if settings.init_adapter is not None:
        check_init_adapter(settings.init_adapter)

    def check_roles() -> None:
        for name, role in settings.roles.items():
            check_role(name, role, answer=ROLE_ANSWERS[name])

    check_run_inputs(app, {role.backend for role in settings.roles.values()}, check_roles)
    probe = BackendPool(app.config)  # builds clients to read the in-process models' files; loads nothing
    if settings.resume:  # before the run row: a resume with another setup leaves nothing behind
        check_resumable(last_checkpoint(settings.out), resume_key(settings, probe))
    pool = PersonaPool(app.store)
    for kind in ("profile", "personality"):
        pool.ensure_seeds(kind)
    train_personas = training_personas(pool, settings, settings.conversations)
    audited = config_judge_kind("eval", app.config.evaluation)  # GRPO's judge is not the config's own
    notice = audit_notice(app.store, probe, "eval", settings.judge, audited_kind=audited)
    run_id = app.store.start_run(
        command_line(), {**app.config.model_dump(mode="json"), "grpo": settings.model_dump(mode="json"),
                         "judge_audit": notice.audit_id}, settings.seed,
    )  # fmt: skip
    app.notify(notice.text, warning=notice.warning)
    progress = step_progress(app, "train grpo", "reward", "mean reward", 3)
    with run_lifetime(app.store, run_id), progress as (steps, say):
        backends = BackendPool(app.config, store=app.store, run_id=run_id)
        envs = build_environments(settings, backends, TreeStore(app.store), run_id)
        summary = train_grpo(
            settings, envs, train_personas, callbacks=[steps], on_status=say,
            extra_summary={"run_id": run_id, "judge_audit": notice.audit_id}, backends=backends,
        )  # fmt: skip
    app.store.finish_run(run_id, "completed")
    if app.as_json:
        app.emit_json(summary)
        return
    first, last = (format_value(summary[key]) for key in ("reward_first", "reward_last"))
    click.echo(f"grpo: {summary['steps']} steps, {summary['conversations_started']} conversations, mean reward "
               f"{first} at step 1, {last} at the last, in {summary['runtime_s']:.1f}s")  # fmt: skip
    click.echo(f"adapter: {settings.out}  (use it as --model/--role backend {summary['adapter_spec']})")


for offline in (offline_command("sft", "LoRA SFT on exported rows."), offline_command("dpo", "LoRA DPO on pairs.")):
    train_group.add_command(offline)
train_group.add_command(grpo_command)

commands = (train_group,)
