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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a command as Ctrl-C does: ``kill``, and the terminal it ran in being closed."""


def stop_signals() -> list[int]:
    """:data:`STOP_SIGNALS` this process should act on: not one it was started ignoring (``nohup`` ignores
    SIGHUP so that a run outlives its terminal)."""
    return [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so that a run ends ``interrupted`` exactly as after Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where SIGTERM or SIGHUP ends the run as asyncio ends it on Ctrl-C.

    The main task is cancelled, every task unwinds, and :class:`Terminated` is raised once the loop has
    closed. Raised by a signal handler inside the loop instead, it would land in whichever task happened
    to run, and asyncio would log that task's traceback when it is collected.
    """
    signalled: list[int] = []

    async def cancelled_on_stop_signals() -> T:
        if threading.current_thread() is not threading.main_thread():
            return await main  # only the main thread receives signals
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        previous = {signum: signal.getsignal(signum) for signum in stop_signals()}

        def on_signal(signum: int) -> None:
            signalled.append(signum)
            if task is not None:
                task.cancel()

        for signum in previous:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await main
        finally:
            for signum, handler in previous.items():
                loop.remove_signal_handler(signum)  # resets it to the default: put the previous handler back
                if handler is not None:
                    signal.signal(signum, handler)

    try:
        result = asyncio.run(cancelled_on_stop_signals())
    except BaseException as exc:  # the cancellation itself, or whatever the unwinding raised
        if signalled:
            raise Terminated(signalled[0]) from None if isinstance(exc, asyncio.CancelledError) else exc
        raise
    if signalled:  # the main coroutine swallowed the cancellation; the process was still asked to stop
        raise Terminated(signalled[0])
    return result


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
