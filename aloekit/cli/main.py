"""The ``aloe`` group: global options, config loading, and one registration per command module."""

from __future__ import annotations

from pathlib import Path

import click

from aloekit.cli import (
    backends,
    config,
    demo,
    evaluate,
    export,
    judge,
    personas,
    report,
    runs,
    simulate,
    train,
    trees,
    view,
)
from aloekit.cli.app import SEED, AloeGroup, App, check_backend_overrides, import_plugins, setup_logging
from aloekit.config import load_config
from aloekit.secrets import register_secret_env


@click.group(cls=AloeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="ALOE_CONFIG",
    help="TOML or YAML config file (ALOE_CONFIG).",
)
@click.option("--db", type=click.Path(path_type=Path), help="SQLite database (default ./aloe.db, ALOE_DB).")
@click.option("--seed", type=SEED, help="Seed for everything random (ALOE_SEED).")
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
    setup_logging(verbose)
    flags = {"db": db, "seed": seed}
    config = load_config(config_path, overrides=flags)
    for settings in (config.backend, *map(config.backend_settings, config.backends)):
        register_secret_env(settings.api_key_env)  # redacted from every message, even before a backend is built
    import_plugins(config.plugins, (config_path.parent if config_path else Path.cwd()).resolve())
    import_plugins(list(plugins), Path.cwd())
    check_backend_overrides(config, config_path)
    ctx.obj = App(config=config, quiet=quiet, as_json=as_json, cli_seed=seed, config_path=config_path,
                  global_flags={k: v for k, v in flags.items() if v is not None})  # fmt: skip


for module in (backends, config, personas, simulate, trees, export, train, judge, evaluate, report, view, demo, runs):
    for command in module.commands:
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="aloe")
