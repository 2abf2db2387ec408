"""Run ``python -m aloekit.cli`` processes as forks of one that has already imported the heavy libraries.

Most of a CLI test's time went to importing torch, transformers and trl again in every process (several CPU
seconds each, on a 2-core machine running two test workers). The server (``python -m tests.forkserver``)
imports them once; each command is then a fork of it: a process of its own, with its own exit status, standard
streams, working directory and environment, running the CLI as ``python -m aloekit.cli`` does and ending through
the interpreter's normal shutdown. What a fork cannot reproduce is the environment as the libraries read it when
imported (OpenMP thread counts, Hugging Face cache and offline settings): :meth:`ForkServer.run` starts a plain
subprocess instead when such a variable differs from the server's.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
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
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "PYTHON", "XDG_")
"""Variables that libraries read when imported: a command whose environment changes one runs as a subprocess."""
REPO = Path(__file__).resolve().parents[1]
WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def serve() -> None:
    """Import the heavy modules, then fork one CLI process per request line; report each pid, then its status."""
    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_cli(request)  # never returns: the child exits
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


def _run_cli(request: dict) -> None:
    """In the forked child: take the request's directory, environment and streams, then run the CLI's main."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, (path, flags) in enumerate(
        [(request["stdin"], os.O_RDONLY), (request["stdout"], WRITE), (request["stderr"], WRITE)]
    ):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    encoding = locale.getpreferredencoding(False)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=encoding)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=encoding)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=encoding, errors="backslashreplace")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    main = Path(importlib.import_module("aloekit.cli").__file__).with_name("__main__.py")
    sys.argv = [str(main), *request["args"]]
    sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first (plugins next to a config)
    try:
        runpy.run_module("aloekit.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_)
    # The interpreter's shutdown, up to tearing down its modules: that last part takes seconds with torch and trl
    # loaded (a plain `aloe --help` would not have them), and only frees memory.
    threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads, as shutdown does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _exit_code(exit_: SystemExit) -> int:
    """The status ``SystemExit`` gives a process: its code, or 1 after printing a message that is not one."""
    if exit_.code is None or isinstance(exit_.code, int):
        return exit_.code or 0
    print(exit_.code, file=sys.stderr)
    return 1


class ForkServer:
    """The test side: one server process per test worker, started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}
        self._lock = threading.Lock()

    def run(
        self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """What ``subprocess.run([python, -m, aloekit.cli, *args], capture_output=True, text=True)`` returns."""
        command = [sys.executable, "-m", "aloekit.cli", *args]
        with self._lock:
            if not self._forkable(env):
                return subprocess.run(
                    command, cwd=cwd, env=dict(env), input=input, capture_output=True, text=True, timeout=timeout
                )
            with tempfile.TemporaryDirectory(prefix="aloe-fork-") as folder:
                streams = {name: Path(folder) / name for name in ("stdin", "stdout", "stderr")}
                streams["stdin"].write_text(input or "", encoding=locale.getpreferredencoding(False))
                request = {
                    "args": list(args),
                    "cwd": str(cwd),
                    "env": dict(env),
                    **{k: str(p) for k, p in streams.items()},
                }
                returncode = self._call(request, command, timeout)
                stdout, stderr = (self._read(streams[name]) for name in ("stdout", "stderr"))
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    def close(self) -> None:
        """Stop the server."""
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait(timeout=60)
            self._process = None

    def _forkable(self, env: Mapping[str, str]) -> bool:
        """Whether a fork sees ``env`` as a new process would: no import-time variable differs from the server's."""
        if self._process is None or self._process.poll() is not None:
            self._env = dict(os.environ)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.forkserver"],
                cwd=REPO,
                env=self._env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # unbuffered: a line read is all that was read, so select() sees the next one coming
            )
        keys = {k for k in {*env, *self._env} if k.startswith(IMPORT_TIME_PREFIXES)}
        return all(env.get(k) == self._env.get(k) for k in keys)

    def _call(self, request: dict, command: list[str], timeout: float) -> int:
        """Send one request; the child's exit status, killing it (as ``subprocess.run`` does) past ``timeout``."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(request).encode() + b"\n")
        pid = int(self._reply(None))
        try:
            return int(self._reply(time.monotonic() + timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)
            self._reply(None)
            raise subprocess.TimeoutExpired(command, timeout) from None

    def _reply(self, deadline: float | None) -> bytes:
        """The server's next line; ``TimeoutExpired`` if none came by ``deadline``."""
        assert self._process is not None and self._process.stdout is not None
        if deadline is not None:
            ready, _, _ = select.select([self._process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise subprocess.TimeoutExpired("forkserver", 0)
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited (status {self._process.wait()}); its output is above")
        return line

    @staticmethod
    def _read(path: Path) -> str:
        """A captured stream, decoded as ``subprocess.run(text=True)`` decodes it (universal newlines)."""
        return path.read_text(encoding=locale.getpreferredencoding(False))


if __name__ == "__main__":
    serve()
