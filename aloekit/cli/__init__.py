"""The ``aloe`` command line: one module per stage, one error boundary (:mod:`aloekit.cli.app`)."""

from aloekit.cli.main import cli, main

__all__ = ["cli", "main"]
