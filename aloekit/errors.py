"""Errors that the CLI reports as one line, without a traceback."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where SIGTERM ends the run as asyncio ends it on Ctrl-C.

    The main task is cancelled, every task unwinds, and :class:`Terminated` is raised once the loop has
    closed. Raised by a signal handler inside the loop instead, it would land in whichever task happened
    to run, and asyncio would log that task's traceback when it is collected.
    """
    signalled: list[bool] = []

    async def cancelled_on_sigterm() -> T:
        if threading.current_thread() is not threading.main_thread():
            return await main  # only the main thread receives signals
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm() -> None:
            signalled.append(True)
            if task is not None:
                task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)  # resets SIGTERM to the default: put the previous back
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    try:
        result = asyncio.run(cancelled_on_sigterm())
    except BaseException as exc:  # the cancellation itself, or whatever the unwinding raised
        if signalled:
            raise Terminated() from None if isinstance(exc, asyncio.CancelledError) else exc
        raise
    if signalled:  # the main coroutine swallowed the cancellation; the process was still asked to stop
        raise Terminated()
    return result


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
