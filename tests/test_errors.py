"""SIGTERM during an event loop ends it as Ctrl-C does: every task unwinds, then one Terminated, no stray tracebacks."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

import pytest

from aloekit.errors import Terminated, run_async


def raise_terminated(signum, frame):
    raise Terminated()


async def workers_one_of_which_is_signalled(unwound: list[str]) -> None:
    async def worker(name: str, signals: bool) -> None:
        try:
            if signals:
                os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(60)
        finally:
            unwound.append(name)

    async with asyncio.TaskGroup() as group:
        for i in range(3):
            group.create_task(worker(f"w{i}", signals=i == 1))


def test_sigterm_in_the_loop_unwinds_every_task_then_raises_terminated_once(caplog):
    previous = signal.signal(signal.SIGTERM, raise_terminated)  # what the CLI installs
    unwound: list[str] = []
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"), pytest.raises(Terminated):
            run_async(workers_one_of_which_is_signalled(unwound))
        gc.collect()  # a task left holding the exception logs "never retrieved" when it is collected
        assert signal.getsignal(signal.SIGTERM) is raise_terminated  # the CLI's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(unwound) == ["w0", "w1", "w2"]
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_an_error_while_unwinding_after_sigterm_still_ends_in_terminated():
    async def cleanup_fails() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(60)
        finally:
            raise RuntimeError("the pool failed to close")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with pytest.raises(Terminated) as caught:
            run_async(cleanup_fails())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(caught.value.__cause__, RuntimeError)  # the run ends interrupted, the cause kept


def test_without_a_signal_it_returns_the_result_and_errors_pass_through():
    async def answer() -> int:
        return 42

    async def fails() -> None:
        raise ValueError("boom")

    assert run_async(answer()) == 42
    with pytest.raises(ValueError, match="boom"):
        run_async(fails())
