"""``aloe report``: report.md, summary.json and the AL(k) plot for evaluation runs."""

from __future__ import annotations

from pathlib import Path

import click

from aloekit.cli.app import App, pass_app
from aloekit.outputs import output_folder


@click.command("report")
@click.argument("run_ids", nargs=-1, required=True)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for report.md, summary.json, al_curve.png."
)
@click.option("--note", help="A line shown at the top of the report.")
@pass_app
def report_command(app: App, run_ids: tuple[str, ...], out: Path, note: str | None) -> None:
    """Write report.md, summary.json and al_curve.png for one or more evaluation runs."""
    from aloekit.evaluation import write_report

    summary = write_report(app.store, list(run_ids), output_folder(out, "--out"), note=note)
    if app.as_json:
        app.emit_json(summary)
        return
    click.echo(f"wrote {out / 'report.md'}, {out / 'summary.json'} and {out / 'al_curve.png'}")


commands = (report_command,)
