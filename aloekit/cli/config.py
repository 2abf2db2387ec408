"""``aloe config show``: the configuration a command would run with, and where each value came from."""

from __future__ import annotations

import json
from typing import Any

import click

from aloekit.cli.app import App, pass_app
from aloekit.config import config_layers, source_of


@click.group("config")
def config_group() -> None:
    """Show the effective configuration."""


@config_group.command("show")
@click.argument("command", required=False, type=click.Choice(["simulate", "eval"]))
@pass_app
def config_show(app: App, command: str | None) -> None:
    """Every setting (with COMMAND: that command's section, role tables merged) and its source."""
    from pydantic import ValidationError

    from aloekit.evaluation import EvalConfig
    from aloekit.graphs import SimulationConfig

    effective = app.config.model_dump(mode="json")
    section = {"simulate": "simulation", "eval": "evaluation"}.get(command or "")
    for name in ("simulation", "evaluation"):  # raw tables: shown resolved, for the command that reads them
        if name != section:
            effective.pop(name)
    try:
        if section == "simulation":
            effective[section] = SimulationConfig.resolve(app.config.simulation).model_dump(mode="json")
        elif section == "evaluation":
            resolved = EvalConfig.resolve({"model": "(set by --model)"}, app.config.evaluation)
            effective[section] = resolved.model_dump(mode="json")
    except ValidationError as exc:
        raise app.section_error(str(section), exc) from None
    if section:  # a stage's seed: `aloe --seed` wins over the section's own (App.seed_for)
        effective[section]["seed"] = app.seed_for(None, getattr(app.config, section))
    layers = config_layers(app.config_path, app.global_flags)
    if section and app.cli_seed is not None:
        layers.insert(0, ("flag --seed", {section: {"seed": app.cli_seed}}))
    rows = [(key, value, source_of(loc, layers) or "default") for loc, key, value in _leaves(effective)]
    if app.as_json:
        app.emit_json({key: {"value": value, "source": source} for key, value, source in rows})
        return
    width = max(len(f"{key} = {json.dumps(value)}") for key, value, _ in rows)
    for key, value, source in rows:
        click.echo(f"{f'{key} = {json.dumps(value)}':<{width}}  # {source}")


def _leaves(data: Any, loc: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """Every leaf of nested dicts and lists of dicts, with its location and dotted name."""
    if isinstance(data, dict) and data:
        return [leaf for key, value in data.items() for leaf in _leaves(value, (*loc, key))]
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return [leaf for index, item in enumerate(data) for leaf in _leaves(item, (*loc, index))]
    return [(loc, ".".join(map(str, loc)), data)]


commands = (config_group,)
