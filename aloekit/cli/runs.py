"""``aloe runs``: recorded runs."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from aloekit.cli.app import COUNT, App, pass_app


@click.group()
def runs() -> None:
    """Inspect recorded runs."""


@runs.command("list")
@click.option("--limit", type=COUNT, default=20, show_default=True)
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


commands = (runs,)
