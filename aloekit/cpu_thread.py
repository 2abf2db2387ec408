"""One thread for the CPU work of in-process models: loading, generating, embedding.

torch spreads each CPU operation over an OpenMP team led by the calling thread. GNU OpenMP (torch's on Linux)
keeps a team for every thread that has led one, and once the teams hold more threads than the machine has
cores, idle workers stop spinning and sleep, so each of the thousand operations of a decoding step waits for
them to wake: on 2 cores a SmolLM2-135M step took 40 ms in an executor thread once another thread had used
torch, against 16 ms with one thread doing all of it. ``asyncio.to_thread`` may hand each call to a different
thread, so in-process models run their CPU work here instead, one call at a time: on a CPU they would share
its cores anyway. A call made on the thread runs at once (a trainer here reaches its rollouts' models); work
here must not wait for another thread that waits for this one, so async code reaches it through
:func:`run_on_cpu_thread` (or :func:`run_off_loop`, for work of an object that says whether it uses the
thread), never ``asyncio.to_thread`` of something that calls :func:`call_on_cpu_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_this_thread = threading.local()


def _mark_cpu_thread() -> None:
    _this_thread.is_cpu_thread = True


def _cpu_executor() -> ThreadPoolExecutor:
    """The process's one CPU worker thread, started on first use."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="aloekit-cpu", initializer=_mark_cpu_thread)
        return _executor


def _forget_executor() -> None:
    """A forked child has no worker thread: it starts its own on first use."""
    global _executor, _lock
    _executor, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_executor)


def on_cpu_thread() -> bool:
    """Whether the calling thread is the CPU thread."""
    return getattr(_this_thread, "is_cpu_thread", False)


@contextlib.contextmanager
def as_cpu_thread() -> Iterator[None]:
    """Make the calling thread the CPU thread while the block runs: for a command whose trainer must stay on the
    main thread, where Ctrl-C reaches it, with its rollouts' models (``aloe train grpo``). Enter it before any
    torch work; a call from another thread meanwhile still goes to the worker thread."""
    was = on_cpu_thread()
    _this_thread.is_cpu_thread = True
    try:
        yield
    finally:
        _this_thread.is_cpu_thread = was


def call_on_cpu_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` on the one CPU thread, waiting for it (at once when called there)."""
    if on_cpu_thread():
        return function(*args, **kwargs)
    return _cpu_executor().submit(function, *args, **kwargs).result()


async def run_off_loop(owner: object, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, work of ``owner`` (a model, an embedder), off the event loop: on the CPU thread where
    ``owner.uses_cpu_thread`` says it computes there, else in an ``asyncio.to_thread`` worker (a model on a
    GPU, an HTTP embedder: neither should hold up the CPU thread)."""
    if getattr(owner, "uses_cpu_thread", False):
        return await run_on_cpu_thread(function, *args)
    return await asyncio.to_thread(function, *args)


async def run_on_cpu_thread(function: Callable[..., T], *args: Any) -> T:
    """``await asyncio.to_thread(function, *args)``, on the one CPU thread (with the caller's context); called
    there (a trainer's rollouts), at once: the thread is busy with the caller."""
    if on_cpu_thread():
        return function(*args)
    call = functools.partial(contextvars.copy_context().run, function, *args)
    return await asyncio.get_running_loop().run_in_executor(_cpu_executor(), call)
