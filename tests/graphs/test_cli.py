import json
import shutil

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.testing import StubOpenAIServer, role_aware_reply
from tests.graphs.test_generation import SNAPSHOT


def test_simulate_then_inspect_trees(run_aloe, tmp_path):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        proc = run_aloe("--json", "simulate", "--conversations", "2", "--turns", "2", "--role", f"all={server.spec()}",
                        "--seed", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["statuses"] == {"complete": 2} and result["turns_saved"] == 4 and result["unlabelled_turns"] == 0
    assert set(result["usage"]) == {"user", "inducer", "preferred", "plain", "judge"}
    listed = json.loads(run_aloe("--json", "trees", "list", "--run", result["run_id"]).stdout)
    assert [c["turns_done"] for c in listed] == [2, 2]
    cid = listed[0]["id"]
    shown = run_aloe("trees", "show", cid).stdout
    assert "[turn 2] USER:" in shown and "->" in shown and "[preferred" in shown and "[rejected" in shown
    data = json.loads(run_aloe("trees", "export", cid, "--format", "json").stdout)
    assert len(data["nodes"]) == 7 and len(data["edges"]) == 6
    assert run_aloe("trees", "export", cid, "--format", "mermaid", "--out", "t.mmd").returncode == 0
    assert (tmp_path / "t.mmd").read_text().startswith("flowchart TD")
    assert run_aloe("trees", "export", cid, "--format", "dot").stdout.startswith("digraph")
    run = json.loads(run_aloe("--json", "runs", "list").stdout)[0]
    assert run["status"] == "completed" and run["config"]["simulation_resolved"]["turns"] == 2
    assert run["config"]["hardware"] is None  # no role runs in this process


def test_simulate_records_the_hardware_of_in_process_roles(run_aloe, tiny_model_dir):
    proc = run_aloe("--json", "simulate", "--conversations", "1", "--turns", "1", "--role", f"all=hf:{tiny_model_dir}")
    assert proc.returncode == 0, proc.stderr
    run = json.loads(run_aloe("--json", "runs", "list").stdout)[0]
    hardware = run["config"]["hardware"]
    assert (
        hardware["device"] in {"cpu", "cuda"}
        and hardware["conversations"] == run["config"]["simulation_resolved"]["concurrency"]
    )
    # Which files the model answered with, read as the response cache and judge audits read them.
    spec = f"hf:{tiny_model_dir}"
    assert hardware["files"] == BackendPool(AloeConfig()).files([spec]) and len(hardware["files"][spec]) == 16
    if hardware["device"] == "cpu":  # the configured defaults stand on CPU
        assert hardware["engines"] == {f"hf:{tiny_model_dir}": "static"} and hardware["in_flight"] is None
        assert hardware["conversations"] == 8


def test_a_run_is_not_resumed_with_a_model_whose_files_changed(run_aloe, tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    first = run_aloe("--json", "simulate", "--conversations", "1", "--turns", "2", "--budget-calls", "3",
                     "--role", f"all=hf:{folder}")  # fmt: skip
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    unchanged = run_aloe("--json", "simulate", "--resume", run_id, "--budget-calls", "2")  # same files: resumes
    assert unchanged.returncode == 0, unchanged.stderr
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")  # replaced in place
    resumed = run_aloe("simulate", "--resume", run_id)
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert resumed.stderr == (
        f"error: run {run_id}: the files of hf:{folder} changed since it started (retrained "
        "or replaced): resuming would mix two models' answers in one run; start a new run\n"
    )
    run = json.loads(run_aloe("--json", "runs", "list").stdout)[0]
    assert run["id"] == run_id and run["status"] == "incomplete"  # left as it was


@pytest.mark.parametrize("flag", ["--budget-calls", "--max-calls"])
def test_simulate_budget_then_resume(run_aloe, flag):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        first = run_aloe("--json", "simulate", "--conversations", "2", "--turns", "2", flag, "7",
                         "--role", f"all={server.spec()}")  # fmt: skip
        assert first.returncode == 0, first.stderr
        deprecated = "warning: --max-calls is deprecated for a run budget, use --budget-calls"
        assert (deprecated in first.stderr) == (flag == "--max-calls")  # the old spelling still works, with a warning
        result = json.loads(first.stdout)
        assert "complete" not in result["statuses"] or result["statuses"]["complete"] < 2
        # The run's own settings are not taken again, even unchanged; an unknown run is named first.
        again = run_aloe("simulate", "--resume", result["run_id"], "--turns", "2")
        assert again.returncode == 1 and again.stderr.strip() == (
            "error: --resume continues a run as it was configured: leave out --turns (only --concurrency and the "
            "budgets apply; start a new run to change the others)")  # fmt: skip
        assert "no run 'nope'" in run_aloe("simulate", "--resume", "nope", "--turns", "2").stderr
        resumed = json.loads(run_aloe("--json", "simulate", "--resume", result["run_id"]).stdout)
    assert resumed["statuses"] == {"complete": 2}
    assert result["turns_saved"] + resumed["turns_saved"] == 4


def test_simulate_bad_input_is_one_line(run_aloe):
    for args, message in [
        (("--role", "boss=openai:gpt-4o-mini"), "unknown role 'boss'"),
        (("--role", "judge"), "--role expects ROLE=SPEC"),
        (("--resume", "nope"), "no run 'nope'"),
    ]:
        proc = run_aloe("simulate", *args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    proc = run_aloe("trees", "show", "missing")
    assert proc.returncode == 1 and "no conversation 'missing'" in proc.stderr


def test_graph_show_prints_the_state_machine(run_aloe):
    assert run_aloe("graph", "show").stdout.strip() == SNAPSHOT.read_text().strip()
    assert json.loads(run_aloe("--json", "graph", "show").stdout)["mermaid"].strip() == SNAPSHOT.read_text().strip()


def test_custom_role_plugin_from_config(run_aloe, tmp_path):
    (tmp_path / "my_roles.py").write_text(
        "from aloekit.agents import PromptRole, register_role\n\n"
        "@register_role('shouting_inducer')\n"
        "class ShoutingInducer(PromptRole):\n"
        "    system_prompt = 'Report what the user revealed.'\n"
        "    def parse(self, text, view):\n"
        "        return 'PROFILE: ' + text.upper()\n"
    )
    (tmp_path / "aloe.toml").write_text('plugins = ["my_roles"]\n[simulation.inducer]\nkind = "shouting_inducer"\n')
    with StubOpenAIServer(respond=role_aware_reply) as server:
        proc = run_aloe("--json", "--config", "aloe.toml", "simulate", "--conversations", "1", "--turns", "1",
                        "--role", f"all={server.spec()}")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        cid = json.loads(run_aloe("--json", "trees", "list").stdout)[0]["id"]
        tree = json.loads(run_aloe("trees", "export", cid).stdout)
    user_node = next(n for n in tree["nodes"] if n["role"] == "user")
    assert user_node["data"]["hint"].startswith("PROFILE: THAT SOUNDS LOVELY")
    bad = run_aloe("--plugin", "no_such_module", "runs", "list")
    assert bad.returncode == 1 and bad.stderr.startswith("error: plugin 'no_such_module' could not be imported")
