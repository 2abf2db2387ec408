"""The test harness itself: CLI commands forked from the preloaded server behave as subprocesses do, and the
quick demo's file is handed to the workers first."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import SESSION_ENV, pytest_collection_modifyitems, reset_environment


def test_a_forked_command_has_its_own_streams_status_folder_and_environment(run_aloe, fork_server, tmp_path):
    forks = fork_server.forks
    ok = run_aloe("--json", "runs", "list", env={"ALOE_DB": str(tmp_path / "elsewhere.db")})
    assert ok.returncode == 0 and ok.stdout.strip() == "[]" and ok.stderr == ""
    assert (tmp_path / "elsewhere.db").is_file() and not (tmp_path / "aloe.db").exists()
    bad = run_aloe("nosuch")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.startswith("error: No such command 'nosuch'")
    (tmp_path / "personas.txt").write_text("A nurse who keeps bees.\n")
    imported = run_aloe("personas", "import", "personas.txt", "--kind", "profile")  # a path relative to tmp_path
    assert imported.returncode == 0, imported.stderr
    assert fork_server.forks == forks + 3  # all three were forks, not subprocesses


def test_a_command_past_its_timeout_is_killed_and_the_server_goes_on(fork_server, tmp_path):
    env = {**os.environ, "ALOE_DB": str(tmp_path / "aloe.db")}
    assert fork_server.forkable(env)
    with pytest.raises(subprocess.TimeoutExpired):  # no command starts within a millisecond
        fork_server.run(["--help"], cwd=tmp_path, env=env, input=None, timeout=0.001)
    forks = fork_server.forks
    assert fork_server.run(["--help"], cwd=tmp_path, env=env, input=None, timeout=120).returncode == 0
    assert fork_server.forks == forks + 1


def test_an_import_time_variable_gets_a_real_subprocess(fork_server):
    assert fork_server.forkable({**os.environ, "ALOE_DB": "x.db", "COLUMNS": "200"})
    assert not fork_server.forkable({**os.environ, "OMP_NUM_THREADS": "7"})
    assert not fork_server.forkable({**os.environ, "HF_HUB_OFFLINE": "1"})
    assert not fork_server.forkable({**os.environ, "SOMETHING_NEW": "1"})


def test_a_command_run_in_process_does_not_leave_its_environment_to_later_commands(fork_server, tmp_path):
    from click.testing import CliRunner

    from aloekit.cli import cli

    CliRunner().invoke(cli, ["runs", "list"], env={"ALOE_DB": str(tmp_path / "aloe.db")})
    assert os.environ.get("TRANSFORMERS_VERBOSITY") == "error"  # set by the CLI's logging set-up, in-process
    assert not fork_server.forkable(dict(os.environ))
    reset_environment()  # what every test's teardown does
    assert os.environ.get("TRANSFORMERS_VERBOSITY") == SESSION_ENV.get("TRANSFORMERS_VERBOSITY")
    assert fork_server.forkable(dict(os.environ))


@dataclass
class _Item:
    path: Path
    markers: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


def test_the_file_of_a_first_marked_test_leads_then_files_by_test_count():
    small, big, demo = Path("a.py"), Path("b.py"), Path("z_demo.py")
    items = [_Item(small), _Item(big), _Item(big), _Item(demo, {"first"})]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [item.path for item in items] == [demo, big, big, small]
