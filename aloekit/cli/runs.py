"""``aloe runs``: recorded runs."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from aloekit.cli.app import COUNT, App, pass_app
from aloekit.errors import AloeError

RUN_COLUMNS = ("id", "status", "started", "calls", "tokens", "command")
MIN_COMMAND_WIDTH = 20
"""Narrowest the command column may fold to in the terminal table; narrower terminals get plain columns."""


@click.group()
def runs() -> None:
    """Inspect recorded runs."""


def run_cells(run: dict[str, Any]) -> list[str]:
    """One run's cells, in :data:`RUN_COLUMNS` order."""
    return [run["id"], run["status"], run["started_at"][:19], str(run["calls"]), str(run["tokens"]), run["command"]]


def plain_table(rows: list[list[str]]) -> str:
    """Space-aligned columns with the command last, nothing wrapped or cut (ids are copied from here)."""
    widths = [max(len(cell) for cell in column) for column in zip(RUN_COLUMNS, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (list(RUN_COLUMNS), *rows)
    )


def table_width(rows: list[list[str]]) -> int:
    """Columns :func:`rich_table` needs with every column but the command at full width."""
    columns = zip(RUN_COLUMNS[:-1], *(r[:-1] for r in rows), strict=True)
    fixed = sum(max(len(cell) for cell in column) for column in columns)
    return fixed + MIN_COMMAND_WIDTH + 3 * len(RUN_COLUMNS) + 1  # a border and two spaces of padding per column


def rich_table(rows: list[list[str]]) -> Table:
    """The runs as a rich table: only the command column folds; ids and the rest are never wrapped or cut."""
    table = Table()
    for name in RUN_COLUMNS[:-1]:
        table.add_column(name, no_wrap=True)
    table.add_column("command", overflow="fold", min_width=MIN_COMMAND_WIDTH)
    for row in rows:
        table.add_row(*row)
    return table


def _on_terminal() -> bool:
    return sys.stdout.isatty()


@runs.command("list")
@click.option("--limit", type=COUNT, default=20, show_default=True)
@pass_app
def runs_list(app: App, limit: int) -> None:
    """Show the newest runs with status, calls and tokens."""
    with contextlib.suppress(sqlite3.OperationalError):  # a read-only or busy database: listed as stored
        app.store.end_abandoned_runs()
    rows = app.store.list_runs(limit)
    if app.as_json:
        app.emit_json([{**r, "config": json.loads(r["config"]), "versions": json.loads(r["versions"])} for r in rows])
        return
    if app.quiet:
        click.echo("\n".join(r["id"] for r in rows))
        return
    cells = [run_cells(r) for r in rows]
    console = Console()
    # A run id is what people copy into the next command, so it is never wrapped or cut: off a terminal, or
    # on one too narrow for the table, plain columns (a long line wraps whole, the id stays at its start).
    if _on_terminal() and table_width(cells) <= console.width:
        console.print(rich_table(cells))
    else:
        click.echo(plain_table(cells))


@runs.command("delete")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@pass_app
def runs_delete(app: App, run_ids: tuple[str, ...]) -> None:
    """Remove runs with their conversations, trees, call log and audits (then `aloe runs gc` frees their texts)."""
    if unknown := [run_id for run_id in run_ids if app.store.get_run(run_id) is None]:
        raise AloeError(f"no run {unknown[0]!r} in {app.store.path}; nothing deleted")
    for run_id in run_ids:
        app.store.delete_run(run_id)
        app.say(f"deleted run {run_id}")


@runs.command("gc")
@pass_app
def runs_gc(app: App) -> None:
    """Remove the stored texts and prompts that no run references any more, and compact the database."""
    result = app.store.collect_garbage()
    if app.as_json:
        app.emit_json(result)
    else:
        app.say(
            f"removed {result['texts_removed']} texts ({result['text_bytes_removed'] / 1e6:.1f} MB of text); "
            f"{app.store.path}: {result['bytes_before'] / 1e6:.1f} -> {result['bytes_after'] / 1e6:.1f} MB"
        )


commands = (runs,)
