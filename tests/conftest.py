from __future__ import annotations

import os
from pathlib import Path

import pytest

# `make test` runs two pytest-xdist workers on a 2-core machine. Each worker, and every CLI process it starts,
# uses one torch thread: two processes of two OpenMP threads on two cores spin-wait on each other (a 3 s
# generation was measured taking over 120 s), and one thread costs this small model little (14.7 vs 15.4
# tokens/s for SmolLM2-135M here).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from aloekit.agents.backends.registry import register_backend
from tests.forkserver import REPO, ForkServer
from tests.helpers import ScriptedClient, build_tiny_chat_model

SESSION_ENV = dict(os.environ)
"""The environment every test starts from (:func:`restore_environment`) and the fork server runs with."""

SHARED_DATA = REPO.parent / "shared" / "aloe-paper-data"

# A backend registered from the tests, the way a user or plugin adds one; `scripted:NAME` looks up
# the client a test put in SCRIPTED_CLIENTS.
SCRIPTED_CLIENTS: dict[str, ScriptedClient] = {}


@register_backend("scripted", description="test-only scripted client")
def _build_scripted(spec, settings):
    return SCRIPTED_CLIENTS[spec.target]


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per xdist worker, even if torch was imported before the environment was set."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a test marked ``first`` run before the rest, which follow by their number of tests (most first),
    each file's own order kept; tests marked ``gpu`` are skipped without a CUDA device.

    ``make test`` hands xdist this order (``--no-loadscope-reorder``): xdist's own reordering sorts files by their
    number of tests only, which started the one-test quick demo, the longest test, twelve minutes into the run.
    """
    files: dict[Path, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.path, []).append(item)
    ordered = sorted(
        files.values(), key=lambda tests: (all(t.get_closest_marker("first") is None for t in tests), -len(tests))
    )
    items[:] = [item for tests in ordered for item in tests]
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs a CUDA device (benchmarks/gpu_check.sh runs these on a GPU machine)")
            for item in gpu_tests:
                item.add_marker(skip)


@pytest.fixture
def scripted():
    """Register a ScriptedClient under ``scripted:NAME`` for the test."""
    names = []

    def add(name: str, client: ScriptedClient) -> str:
        SCRIPTED_CLIENTS[name] = client
        names.append(name)
        return f"scripted:{name}"

    yield add
    for name in names:
        SCRIPTED_CLIENTS.pop(name, None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-model"))


def reset_environment() -> None:
    """Back to the session's environment: what a test changed, or a command it ran in-process set (the CLI's
    quieting variables), is gone."""
    pytests = {k: v for k, v in os.environ.items() if k.startswith("PYTEST_")}  # pytest's own, e.g. the current test
    wanted = {**{k: v for k, v in SESSION_ENV.items() if not k.startswith("PYTEST_")}, **pytests}
    if os.environ != wanted:
        os.environ.clear()
        os.environ.update(wanted)


@pytest.fixture(autouse=True)
def restore_environment():
    """Each test leaves the environment as the session began (later tests, and the fork server, rely on it)."""
    yield
    reset_environment()


@pytest.fixture(scope="session")
def fork_server():
    """Starts CLI processes as forks of one that has imported torch and the rest once (:mod:`tests.forkserver`)."""
    server = ForkServer(SESSION_ENV)
    yield server
    server.close()


@pytest.fixture
def run_aloe(tmp_path, fork_server):
    """Run the real CLI in a process of its own in ``tmp_path``; returns CompletedProcess. ``fresh=True``: a new
    Python process rather than a fork of the preloaded server (:mod:`tests.forkserver`)."""

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 120, fresh=False):
        full_env = {**os.environ, "ALOE_DB": str(tmp_path / "aloe.db"), **(env or {})}
        return fork_server.run(args, cwd=tmp_path, env=full_env, input=input, timeout=timeout, fresh=fresh)

    return run
