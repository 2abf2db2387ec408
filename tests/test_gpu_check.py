"""The GPU check's harness, run here with a stand-in interpreter (CI has no GPU): only the steps asked run,
each step's result and number reach the summary table, a failed step fails the check without stopping the
rest, and an unknown step name stops it before anything runs. A mistake in the script would otherwise first
show on a GPU machine, lent for minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$1" in
  -) exec "$REAL_PYTHON" "$@" ;;  # the summary's own parsers
  -c) echo "header" ;;
  -m)
    case "$2" in
      pytest) echo "3 passed in 1.00s" ;;
      aloekit.cli)
        case " $* " in
          *" simulate "*) [ -n "${FAIL_SIMULATE:-}" ] && { echo "simulate broke" >&2; exit 1; }
            echo '{"statuses": {"done": 64}, "usage": {"user": {"calls": 600}, "judge": {"calls": 363}},'
            echo ' "turns_saved": 192}' ;;
          *) echo '{"avg": 3.25, "turns_saved": 8}' ;;
        esac ;;
    esac ;;
  benchmarks/bench_engine.py) printf '         1 |   49.4 |   20.1\\n        64 |  1234.5 |  600.2\\n'
    echo "aloekit continuous, 64 concurrent / single stream: 25.00x" ;;
  benchmarks/bench_train.py) echo "ratio 0.91" ;;
esac
"""


def _gpu_check(tmp_path: Path, steps: str, **env: str) -> subprocess.CompletedProcess[str]:
    stand_in = tmp_path / "python"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    environment = {**os.environ, "PYTHON": str(stand_in), "REAL_PYTHON": sys.executable, "GPU_CHECK_STEPS": steps,
                   "GPU_CHECK_OUT": str(tmp_path / "out"), "CALLS": str(tmp_path / "calls"), **env}  # fmt: skip
    environment.pop("OUT", None)
    return subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by step: result, wall time, what was measured (four columns, no more)."""
    table = [row.split("|") for row in stdout[stdout.index("step | result | wall | measured") :].splitlines()[1:]]
    assert all(len(row) == 4 for row in table if len(row) > 1), table
    return {row[0]: row[1:] for row in table if len(row) > 1}


def test_only_the_steps_asked_run_and_reach_the_table(tmp_path):
    done = _gpu_check(tmp_path, "engine,simulate")
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert sorted(rows) == ["engine", "simulate"]
    engine = ("1 concurrent: 49.4 / 20.1;64 concurrent: 1234.5 / 600.2;"
              "aloekit continuous, 64 concurrent / single stream: 25.00x")  # fmt: skip
    assert rows["engine"][0] == "ok" and rows["engine"][2] == engine
    assert rows["simulate"] == ["ok", rows["simulate"][1], "{'done': 64}, 963 calls, 192 turns"]
    calls = (tmp_path / "calls").read_text()
    assert "bench_engine.py --concurrency 1,8,32,64" in calls and "simulate --conversations 64 --turns 3" in calls
    assert "pytest" not in calls and "bench_train.py" not in calls and "eval" not in calls
    assert "GPU check summary" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_a_failed_step_fails_the_check_and_the_rest_still_run(tmp_path):
    done = _gpu_check(tmp_path, "simulate eval", FAIL_SIMULATE="1")
    assert done.returncode == 1
    rows = _rows(done.stdout)
    assert rows["simulate"][0] == "FAILED (1)"
    assert rows["eval"][0] == "ok" and rows["eval"][2] == '"avg": 3.25 "turns_saved": 8'
    assert "simulate broke" in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.mark.parametrize("steps", ["tests,bogus", "simulate train"])
def test_an_unknown_step_stops_the_check_before_anything_runs(tmp_path, steps):
    done = _gpu_check(tmp_path, steps)
    assert done.returncode == 2 and done.stdout == ""
    unknown = steps.replace(",", " ").split()[-1]
    assert done.stderr == (f"gpu_check.sh: GPU_CHECK_STEPS: unknown step '{unknown}' "
                           "(steps: tests engine simulate train_sft grpo eval train_dpo)\n")  # fmt: skip
    assert not (tmp_path / "calls").exists() and not (tmp_path / "out").exists()
