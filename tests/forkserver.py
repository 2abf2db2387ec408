"""Run ``python -m aloekit.cli`` processes as forks of one that has already imported the heavy libraries.

Most of a CLI test's time went to importing torch, transformers and trl again in every process (several CPU
seconds each, on a 2-core machine running two test workers). The server (``python -m tests.forkserver``)
imports them once; each command is then a fork of it: a process of its own, with its own exit status, standard
streams, working directory and environment, running the CLI as ``python -m aloekit.cli`` does.

A fork differs from a new process in what happened before it: the libraries read their environment when
imported (thread counts, Hugging Face settings), every fork shares the server's hash seed, and warnings printed
while importing appear once, in the server's output. :meth:`ForkServer.run` therefore starts a plain subprocess
when a variable other than those read at run time differs from the server's, and tests that depend on the rest
(hash seeds, a clean start-up) ask for one with ``fresh=True``. The child also ends without tearing down its
modules (seconds with torch loaded, for nothing but freeing memory): it joins its threads, runs ``atexit``
handlers and flushes its streams, as an interpreter's shutdown does first.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import locale
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

PRELOAD = (
    "aloekit.cli.main",
    "torch",
    "transformers",
    "peft",
    "trl",
    "sentence_transformers",
    "aloekit.training.grpo",
    "aloekit.evaluation",
    "aloekit.viewer",
)
RUN_TIME_PREFIXES = ("ALOE_", "PYTEST_")
RUN_TIME_NAMES = {"COLUMNS", "LINES", "OPENAI_API_KEY"}
"""Variables read when a command runs (aloekit's, the OpenAI client's key, the terminal's width) or by nobody
in a command (pytest's): a difference in any other, such as ``OMP_NUM_THREADS`` or ``HF_HUB_OFFLINE``, gets a
plain subprocess."""
REPO = Path(__file__).resolve().parents[1]
WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
START_TIMEOUT_S = 900  # importing torch, transformers and trl on a loaded 2-core machine


def serve() -> None:
    """Import the heavy modules, say ``ready``, then fork one CLI process per request line, saying
    ``pid N`` when it starts and ``exit N`` when it ends, on the protocol pipe only."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed while importing goes to stderr, not into the protocol
    for name in PRELOAD:
        importlib.import_module(name)
    print("ready", file=protocol)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.close(protocol.fileno())
            _run_cli(request)
        print(f"pid {pid}", file=protocol)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", file=protocol)


def _run_cli(request: dict) -> None:
    """In the forked child: take the request's streams, directory and environment, run the CLI, and exit."""
    import runpy

    for fd, (path, flags) in enumerate(
        [(request["stdin"], os.O_RDONLY), (request["stdout"], WRITE), (request["stderr"], WRITE)]
    ):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    encoding = locale.getpreferredencoding(False)
    sys.stdin = open(0, encoding=encoding, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stdout = open(1, "w", encoding=encoding, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["-m", *request["args"]]  # runpy puts the module's path first, as `python -m` does
        sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first (plugins next to a config)
        runpy.run_module("aloekit.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_)
    except BaseException:  # what an uncaught exception does to a process: its traceback, status 1
        traceback.print_exc()
    finally:
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads, as shutdown does first
        atexit._run_exitfuncs()
        gc.collect()  # finalizers that print ("Exception ignored in ...") run, as they would at shutdown
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _exit_code(exit_: SystemExit) -> int:
    """The status ``SystemExit`` gives a process: its code, or 1 after printing a message that is not one."""
    if exit_.code is None or isinstance(exit_.code, int):
        return exit_.code or 0
    print(exit_.code, file=sys.stderr)
    return 1


class ForkServer:
    """The test side: one server per test worker, started with ``env`` (the environment the session began
    with), restarted if it died. One command at a time (a test worker runs one test at a time)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._env = dict(env)
        self.forks = 0
        """Commands run as forks (the rest ran as subprocesses)."""

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        input: str | None,
        timeout: float,
        fresh: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """What ``subprocess.run([python, -m, aloekit.cli, *args], capture_output=True, text=True)`` returns;
        a plain subprocess when ``fresh`` or when ``env`` differs from the server's in an import-time variable."""
        command = [sys.executable, "-m", "aloekit.cli", *args]
        if fresh or not self.forkable(env):
            return subprocess.run(
                command, cwd=cwd, env=dict(env), input=input, capture_output=True, text=True, timeout=timeout
            )
        self.start()
        with tempfile.TemporaryDirectory(prefix="aloe-fork-") as folder:
            streams = {name: Path(folder) / name for name in ("stdin", "stdout", "stderr")}
            for name, path in streams.items():  # all there before the child starts, whatever happens to it
                text = (input or "") if name == "stdin" else ""
                path.write_text(text, encoding=locale.getpreferredencoding(False))
            request = {"args": list(args), "cwd": str(cwd), "env": dict(env)}
            request.update({name: str(path) for name, path in streams.items()})
            returncode = self._call(request, command, timeout, streams)
            self.forks += 1
            return subprocess.CompletedProcess(command, returncode, *self._outputs(streams))

    def forkable(self, env: Mapping[str, str]) -> bool:
        """Whether a fork sees ``env`` as a new process would: it differs from the server's only in variables
        read at run time."""
        differing = {k for k in {*env, *self._env} if env.get(k) != self._env.get(k)}
        return all(k.startswith(RUN_TIME_PREFIXES) or k in RUN_TIME_NAMES for k in differing)

    def start(self) -> None:
        """Start the server (unless it runs) and wait until it has imported everything."""
        if self._process is not None and self._process.poll() is None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver"],
            cwd=REPO,
            env=self._env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: a line read is all that was read, so select() sees the next one coming
        )
        if self._expect("ready", time.monotonic() + START_TIMEOUT_S) is None:
            raise RuntimeError(f"the fork server did not start within {START_TIMEOUT_S} s")

    def close(self) -> None:
        """Stop the server."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def _call(self, request: dict, command: list[str], timeout: float, streams: dict[str, Path]) -> int:
        """Send one request; the child's exit status, killing it (as ``subprocess.run`` does) past ``timeout``."""
        assert self._process is not None and self._process.stdin is not None
        deadline = time.monotonic() + timeout
        try:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            pid = int(self._expect("pid", None))  # the server is ready: it forks at once
            status = self._expect("exit", deadline)
            if status is None:
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(pid, signal.SIGKILL)
                self._expect("exit", None)
                raise subprocess.TimeoutExpired(command, timeout, *self._outputs(streams))
            return int(status)
        except subprocess.TimeoutExpired:
            raise
        except BaseException:  # the protocol may be out of step: the next command gets a new server
            self._process.kill()
            self._process.wait()
            raise

    def _expect(self, word: str, deadline: float | None) -> str | None:
        """The rest of the server's next line, which must start with ``word``; None if none came by ``deadline``."""
        assert self._process is not None and self._process.stdout is not None
        if deadline is not None:
            ready, _, _ = select.select([self._process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
        line = self._process.stdout.readline().decode()
        head, _, rest = line.strip().partition(" ")
        if head != word:
            raise RuntimeError(f"the fork server said {line!r}, not {word!r} (status {self._process.poll()})")
        return rest

    @staticmethod
    def _outputs(streams: dict[str, Path]) -> tuple[str, str]:
        """The captured streams, decoded as ``subprocess.run(text=True)`` decodes them (universal newlines)."""
        encoding = locale.getpreferredencoding(False)
        return streams["stdout"].read_text(encoding=encoding), streams["stderr"].read_text(encoding=encoding)


if __name__ == "__main__":
    serve()
