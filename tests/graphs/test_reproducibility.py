"""Same seed, same trees, same exports; eval personas stay out of training simulations."""

from __future__ import annotations

import json

from aloekit.evaluation.task import builtin_eval_dir, eval_persona_ids
from aloekit.personas.pool import seed_file


def _replay_files(tmp_path) -> dict[str, str]:
    """A deterministic backend per role: scripted answers, read in order."""
    answers = {
        "user": [f"user says thing {i}" for i in range(200)],
        "inducer": ["None"] + [f"Profile: fact {i}" for i in range(199)],
        "responder": [f"reply number {i}" for i in range(400)],
        "judge": [("Message 1", "Message 2", "2.", "first")[i % 4] for i in range(200)],
    }
    specs = {}
    for role, lines in answers.items():
        path = tmp_path / f"{role}.json"
        path.write_text(json.dumps(lines))
        specs[role] = f"replay:{path}"
    return specs


def _simulate(run_aloe, specs, *args, env=None):
    roles = ["--role", f"user={specs['user']}", "--role", f"inducer={specs['inducer']}", "--role",
             f"judge={specs['judge']}", "--role", f"preferred={specs['responder']}", "--role",
             f"plain={specs['responder']}"]  # fmt: skip
    proc = run_aloe("--json", *args, "--conversations", "4", "--turns", "3", *roles, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _export(run_aloe, tmp_path, run_id, kind):
    out = tmp_path / f"{run_id}.{kind}.jsonl"
    proc = run_aloe("export", kind, "--run", run_id, "--out", str(out), "--val-fraction", "0.25")
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes() + out.with_name(f"{out.stem}.val.jsonl").read_bytes()


def _ids(path) -> list[str]:
    """The conversation id of every row of a JSONL export."""
    return [json.loads(line)["conversation_id"] for line in path.read_text().splitlines()]


def test_same_seed_gives_byte_identical_exports(run_aloe, tmp_path):
    specs = _replay_files(tmp_path)
    # Two processes with different hash seeds (set and dict orders): nothing may depend on them.
    first = _simulate(run_aloe, specs, "simulate", "--seed", "7", env={"PYTHONHASHSEED": "1"})
    second = _simulate(run_aloe, specs, "--seed", "7", "simulate", env={"PYTHONHASHSEED": "2"})  # global flag too
    other = _simulate(run_aloe, specs, "simulate", "--seed", "8")
    assert first["seed"] == second["seed"] == 7 and other["seed"] == 8
    runs = {r["id"]: r for r in json.loads(run_aloe("--json", "runs", "list").stdout)}
    for result, seed in ((first, 7), (second, 7), (other, 8)):
        run = runs[result["run_id"]]
        assert run["seed"] == seed and run["config"]["simulation_resolved"]["seed"] == seed
    for kind in ("sft", "dpo"):
        a, b = _export(run_aloe, tmp_path, first["run_id"], kind), _export(run_aloe, tmp_path, second["run_id"], kind)
        assert a == b and len(a) > 0
        assert _export(run_aloe, tmp_path, other["run_id"], kind) != a
    # Exported together, the two identical runs keep every row: repeated keys get a suffix, nothing is lost.
    both = run_aloe("--json", "export", "dpo", "--run", first["run_id"], "--run", second["run_id"], "--out",
                    "both.jsonl", "--val-fraction", "0.5")  # fmt: skip
    assert both.returncode == 0, both.stderr
    train, val = (_ids(tmp_path / name) for name in ("both.jsonl", "both.val.jsonl"))
    single = _ids(tmp_path / f"{first['run_id']}.dpo.jsonl") + _ids(tmp_path / f"{first['run_id']}.dpo.val.jsonl")
    assert len(train) + len(val) == 2 * len(single)
    assert len(set(train + val)) == 2 * len(set(single))
    # A key and its copy are one conversation: on opposite sides, validation would hold training data.
    assert val and not {cid.removesuffix("-2") for cid in val} & {cid.removesuffix("-2") for cid in train}

    def trees(run_id):
        listed = json.loads(run_aloe("--json", "trees", "list", "--run", run_id).stdout)
        out = []
        for c in listed:
            tree = json.loads(run_aloe("trees", "export", c["id"]).stdout)
            strip = c["id"]  # node ids hold the conversation id, which holds the run's timestamp
            out.append((c["key"], sorted((n["id"].replace(strip, ""), n["text"], n["label"], n["chosen"],
                                          n["data"].get("judge_order")) for n in tree["nodes"])))  # fmt: skip
        return out

    assert trees(first["run_id"]) == trees(second["run_id"])
    # Tree rows keep database ids, yet hold out the conversations the SFT export holds out.
    keys = {c["id"]: c["key"] for c in json.loads(run_aloe("--json", "trees", "list", "--run", first["run_id"]).stdout)}
    assert (
        run_aloe("export", "tree", "--run", first["run_id"], "--out", "tree.jsonl", "--val-fraction", "0.25").returncode
        == 0
    )
    held_out = {keys[cid] for cid in _ids(tmp_path / "tree.val.jsonl")}
    assert held_out and held_out == set(_ids(tmp_path / f"{first['run_id']}.sft.val.jsonl"))


def test_eval_personas_are_kept_out_of_sampling(run_aloe, tmp_path):
    specs = _replay_files(tmp_path)
    folder = builtin_eval_dir()
    for kind in ("profile", "personality"):  # the shipped seeds, then the eval set's personas on top
        for path in (seed_file(kind), folder / f"{kind}_eval.jsonl"):
            proc = run_aloe("personas", "import", str(path), "--kind", kind)
            assert proc.returncode == 0, proc.stderr
    held_out = eval_persona_ids("builtin")
    kept_out = _simulate(run_aloe, specs, "simulate", "--seed", "1")
    assert kept_out["excluded_eval_personas"] == {"profile": 8, "personality": 5}
    allowed = _simulate(run_aloe, specs, "simulate", "--seed", "1", "--allow-eval-personas")
    assert allowed["excluded_eval_personas"] == {"profile": 0, "personality": 0}

    def personas(run_id):
        listed = json.loads(run_aloe("--json", "trees", "list", "--run", run_id).stdout)
        return [c for c in listed if {c["profile_id"], c["personality_id"]} & held_out]

    assert personas(kept_out["run_id"]) == []
    assert personas(allowed["run_id"])  # 8 of 28 profiles are the eval set's: seed 1 draws some of them
    clean = run_aloe("--json", "export", "dpo", "--run", kept_out["run_id"], "--out", "a.jsonl")
    assert json.loads(clean.stdout)["eval_overlap"]["rows"] == 0 and "warning" not in clean.stderr
    leaky = run_aloe("--json", "export", "dpo", "--run", allowed["run_id"], "--out", "b.jsonl")
    overlap = json.loads(leaky.stdout)["eval_overlap"]
    assert overlap["conversations"] == len(personas(allowed["run_id"])) and overlap["rows"] > 0
    assert "use personas of the builtin eval set" in leaky.stderr
