"""``aloe train``: LoRA SFT or DPO with trl + peft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from aloekit.cli.app import COUNT, App, command_line, pass_app, run_lifetime
from aloekit.errors import AloeError


@click.command("train")
@click.argument("method", type=click.Choice(["sft", "dpo"]))
@click.option(
    "--data", type=click.Path(path_type=Path), required=True, help="JSONL from aloe export, or --hf-dataset folder."
)
@click.option("--base", default="local:smollm2", show_default=True, help="local:smollm2 or hf:PATH.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the LoRA adapter.")
@click.option("--max-steps", type=COUNT, help="Stop after N optimiser steps.")
@click.option(
    "--epochs", type=click.FloatRange(0, 1e6, min_open=True), help="Passes over the data (unless --max-steps)."
)
@click.option("--config", "train_config", type=click.Path(path_type=Path), help="YAML/TOML over the shipped defaults.")
@click.option("--init-adapter", type=click.Path(path_type=Path), help="Continue from this adapter (SFT, then DPO).")
@click.option("--beta", type=click.FloatRange(0, min_open=True), help="DPO beta (default 0.9, the paper's).")
@click.option("--max-length", type=COUNT, help="Longest row in tokens; longer rows are dropped and counted.")
@click.option("--lora-r", type=COUNT, help="LoRA rank.")
@click.option("--lora-alpha", type=COUNT, help="LoRA alpha.")
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), help="LoRA dropout.")
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
    from aloekit.training import build_train_config, check_train_inputs, train
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
    check_train_inputs(config)  # the base, --out, --init-adapter and the data, before the run row
    run_id = app.store.start_run(
        command_line(),
        {**app.config.model_dump(mode="json"), "train": config.model_dump(mode="json")},
        app.config.seed,
    )
    progress = app.progress(f"train {method}", "{task.fields[note]}")
    with run_lifetime(app.store, run_id), progress:
        task = progress.add_task("", total=None, note="loading")

        def report(step: int, total: int, logs: dict[str, Any]) -> None:
            loss = logs.get("loss")
            note = f"step {step}" + (f"  loss {float(loss):.4f}" if loss is not None else "")
            progress.update(task, completed=step, total=total or None, note=note)

        summary = train(
            config, callbacks=[StepReporter(report)], on_status=lambda text: progress.update(task, note=text)
        )
    app.store.finish_run(run_id, "completed")
    if app.as_json:
        app.emit_json(summary)
        return
    click.echo(
        f"{method}: {summary['steps']} steps on {summary['rows']} rows in {summary['runtime_s']:.1f}s, "
        f"final loss {summary['final_loss']}"
    )
    click.echo(f"adapter: {out}  (use it as --model/--role backend {summary['adapter_spec']})")


commands = (train_command,)
