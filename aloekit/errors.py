"""Errors that the CLI reports as one line, without a traceback."""

from __future__ import annotations


class AloeError(Exception):
    """Base class for errors caused by input, configuration or an unreachable backend."""


class ConfigError(AloeError):
    """A config file or value is malformed or invalid."""


class SpecError(AloeError):
    """A backend spec string is malformed or names an unknown backend."""


class BackendError(AloeError):
    """A backend could not be built, or a model call failed after its retries."""


class StoreError(AloeError):
    """The SQLite store cannot be opened or is from a newer aloekit."""


class BudgetExhausted(AloeError):
    """A run's call or token budget is spent; work stops cleanly and can be resumed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run ends ``interrupted`` exactly as after Ctrl-C."""


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
