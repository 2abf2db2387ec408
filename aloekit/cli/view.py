"""``aloe view``: the read-only browser viewer."""

from __future__ import annotations

from pathlib import Path

import click

from aloekit.cli.app import PORT, App, pass_app
from aloekit.errors import Terminated


@click.command()
@click.option("--db", "view_db", type=click.Path(path_type=Path), help="Database to show (default: --db / ./aloe.db).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=8765, show_default=True)
@click.option(
    "--allow-remote", is_flag=True, help="Allow a non-loopback --host (anyone who can reach it sees the data)."
)
@pass_app
def view(app: App, view_db: Path | None, host: str, port: int, allow_remote: bool) -> None:
    """Browse runs, conversation trees and evaluations in a local, read-only web page."""
    from aloekit.viewer import build_server

    server = build_server(view_db or app.config.db, host, port, allow_remote)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host  # an IPv6 address in a URL needs brackets
    click.echo(f"aloekit viewer on http://{shown}:{bound_port}/ (read-only; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            raise  # a service manager stopping it, or its terminal closed: exit 143 or 129, as every command
    finally:
        server.server_close()


commands = (view,)
