"""``aloe demo``: the whole pipeline on the embedded model."""

from __future__ import annotations

from pathlib import Path

import click

from aloekit.cli.app import App, pass_app
from aloekit.errors import AloeError
from aloekit.outputs import output_folder


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("aloe-demo"), show_default=True)
@click.option("--quick", is_flag=True, help="Smaller run (10-20 minutes on 2 cores).")
@pass_app
def demo(app: App, out: Path, quick: bool) -> None:
    """Run the whole ALOE pipeline on the embedded SmolLM2: personas, trees, training, evaluation, report."""
    from aloekit.demo import run_demo

    if "db" in app.global_flags:  # ignored before, so a user looked for the demo's runs in the wrong file
        raise AloeError(f"--db: aloe demo keeps its runs in its own {out / 'aloe.db'}; leave --db out")
    result = run_demo(output_folder(out, "--out"), quick=quick, say=app.say if not app.as_json else lambda text: None)
    if app.as_json:
        app.emit_json(result)


commands = (demo,)
