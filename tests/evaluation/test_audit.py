"""The judge audit on scripted judges: a perfect one, a position-biased one, a random one."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import replace

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.evaluation.audit import (
    AuditConfig,
    audit_notice,
    config_judge_kind,
    judge_files,
    judge_key,
    latest_audit,
    read_labels,
    run_audit,
    save_audit,
)
from aloekit.evaluation.task import load_eval_personas
from aloekit.graphs import RoleConfig
from aloekit.store import Store
from aloekit.testing import StubOpenAIServer
from tests.helpers import ScriptedClient


def _profile(system: str) -> str:
    found = re.search(r"Profile: (.+)", system)
    return found.group(1) if found else ""


def audit_world(messages) -> str | None:
    """Answers for the user simulator and the generator; None for judge prompts."""
    system = str(messages[0]["content"])
    if system.startswith("You are playing a real person"):
        return "hey, long day at work"
    if system.startswith("You are chatting with this person"):  # the generator, told a persona
        return "for: " + " ".join(_profile(system).split()[:6])
    if not system.startswith(("You decide", "You rate")):
        return "nice, tell me more"  # the generator told nobody: a generic reply
    return None


def _shown(prompt: str) -> list[tuple[str, str]]:
    return re.findall(r"Message (\w+):\n(.+)", prompt)


def perfect_judge(messages, options):
    if (answer := audit_world(messages)) is not None:
        return answer
    mine = "for: " + " ".join(_profile(messages[0]["content"]).split()[:6])
    prompt = messages[-1]["content"]
    if prompt.rstrip().endswith("Score (1-5):"):
        return "5" if mine in prompt else "1"
    return next(f"Message {label}" for label, text in _shown(prompt) if text.strip() == mine)


def biased_judge(messages, options):
    return audit_world(messages) or "Message 1"


def random_judge(messages, options):
    if (answer := audit_world(messages)) is not None:
        return answer
    seed = hashlib.sha256(messages[-1]["content"].encode()).digest()
    return random.Random(seed).choice(["Message 1", "Message 2"])


def _setup(scripted, tmp_path, respond, stage="simulate", personas=8):
    spec = scripted(f"audit-{respond.__name__}-{stage}", ScriptedClient(respond))
    kind = "preference_judge" if stage == "simulate" else "alignment_scorer"
    config = AuditConfig(
        stage=stage, judge=RoleConfig(kind=kind, backend=spec), user=RoleConfig(kind="user_simulator", backend=spec),
        generator=RoleConfig(kind="model_under_test", backend=spec), personas=personas,
    )  # fmt: skip
    store = Store(tmp_path / "aloe.db")
    return config, BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store), store


async def test_a_perfect_judge_passes(scripted, tmp_path):
    config, backends, store = _setup(scripted, tmp_path, perfect_judge)
    result = await run_audit(config, backends)
    assert result.probes == 16 and result.trials == 32  # 8 personas x 2 probes x both orders
    assert result.accuracy == 1.0 and result.flip_rate == 0.0 and result.invalid == 0
    assert result.ci_low > 0.6 and result.passed  # Wilson over the 8 personas: their trials are not independent
    assert result.by_kind == {"other_persona": {"correct": 16, "trials": 16}, "generic": {"correct": 16, "trials": 16}}
    assert "better than chance" in result.plain_words()
    run_id = store.start_run("audit", {}, 0)
    audit_id = save_audit(store, run_id, result)
    found = latest_audit(store, judge_key("simulate", config.judge))
    assert found is not None and found[0] == audit_id and found[1].accuracy == 1.0
    # Named after its run (the only part a same-seed rerun changes) and numbered within it.
    assert audit_id == f"audit-{run_id}-1" and save_audit(store, run_id, result) == f"audit-{run_id}-2"


async def test_an_audit_vouches_only_for_the_files_the_judge_answered_with(scripted, tmp_path, tiny_model_dir):
    config, backends, store = _setup(scripted, tmp_path, perfect_judge, personas=2)
    result = await run_audit(config, backends)
    assert result.judge_files is None  # a scripted judge, like a server's, has no files of ours
    key, run_id = judge_key("simulate", config.judge), store.start_run("audit", {}, 0)
    audited = save_audit(store, run_id, replace(result, judge_files="a" * 16))
    assert latest_audit(store, key, "a" * 16)[0] == audited
    assert latest_audit(store, key, "b" * 16) is None  # the judge was retrained or replaced since
    assert latest_audit(store, key)[0] == audited  # files not known (a run that did not record them): any
    damaged = {**next(store.db["judge_audits"].rows_where("id = ?", [audited])), "id": "audit-damaged",
               "result": "{not json", "created_at": "9999"}  # fmt: skip
    store.insert("judge_audits", damaged)  # one damaged row does not break the lookup
    assert latest_audit(store, key, "a" * 16)[0] == audited
    legacy = save_audit(store, run_id, result)  # as audits made before files were recorded
    assert latest_audit(store, key, "b" * 16)[0] == legacy
    # An in-process judge's files are read without loading it; a judge calling no model has none.
    folder = RoleConfig(kind="preference_judge", backend=f"hf:{tiny_model_dir}")
    files = BackendPool(AloeConfig()).files([folder.backend])
    assert re.fullmatch(r"[0-9a-f]{16}", judge_files(folder, files))
    assert judge_files(folder.model_copy(update={"kind": "persona_similarity"}), files) is None
    assert BackendPool(AloeConfig()).files(["openai:http://127.0.0.1:9/v1#m", "scripted:x"]) == {}
    files = judge_files(folder, files)
    notice = audit_notice(store, BackendPool(AloeConfig()), "simulate", folder)
    assert notice.audit_id is None and "has no audit" in notice.text and "kind =" not in notice.text
    # The audit builds its judge from the config: a judge of another kind (GRPO's) says where to set it.
    similarity = folder.model_copy(update={"kind": "persona_similarity"})
    default = config_judge_kind("eval", {})
    assert default == "alignment_scorer" and config_judge_kind("simulate", {}) == "preference_judge"
    assert audit_notice(store, BackendPool(AloeConfig()), "eval", similarity, audited_kind=default).text.endswith(
        f'--role judge={folder.backend}, with [evaluation.judge] kind = "persona_similarity" in --config)'
    )
    audited = config_judge_kind("eval", {"judge": {"kind": "persona_similarity"}})
    configured = audit_notice(store, BackendPool(AloeConfig()), "eval", similarity, audited_kind=audited)
    assert configured.text.endswith(f"--role judge={folder.backend})")  # the config has it already
    save_audit(store, run_id, replace(result, judge_key=judge_key("simulate", folder), judge_files="c" * 16))
    stale = audit_notice(store, BackendPool(AloeConfig()), "simulate", folder)
    assert stale.audit_id is None and stale.warning and "has no audit of its current files" in stale.text
    same = save_audit(store, run_id, replace(result, judge_key=judge_key("simulate", folder), judge_files=files))
    assert audit_notice(store, BackendPool(AloeConfig()), "simulate", folder).audit_id == same


async def test_a_position_biased_judge_flips_every_time_and_fails(scripted, tmp_path):
    config, backends, _ = _setup(scripted, tmp_path, biased_judge)
    result = await run_audit(config, backends)
    assert result.flip_rate == 1.0 and result.accuracy == 0.5
    assert result.ci_low < 0.5 < result.ci_high and not result.passed
    assert "includes chance" in result.plain_words() and result.summary_line().startswith("FAILED")


async def test_both_orders_in_expected_mode_cancels_a_position_bias(scripted, tmp_path):
    def biased_but_informed(messages, options):  # 0.7 on the first shown, shifted 0.1 towards the right reply
        if (answer := audit_world(messages)) is not None:
            return answer
        mine = "for: " + " ".join(_profile(messages[0]["content"]).split()[:6])
        shown = _shown(messages[-1]["content"])
        probs = {label: (0.7 if i == 0 else 0.3) + (0.1 if text.strip() == mine else -0.1)
                 for i, (label, text) in enumerate(shown)}  # fmt: skip
        return max(probs, key=probs.get), probs

    config, backends, _ = _setup(scripted, tmp_path, biased_but_informed)
    judge = config.judge.model_copy(update={"options": {"score_mode": "expected"}})
    one_order = await run_audit(config.model_copy(update={"judge": judge}), backends)
    assert one_order.flip_rate == 1.0 and not one_order.passed
    both = await run_audit(config.model_copy(update={"judge": judge, "both_orders": True}), backends)
    # One verdict per probe, averaged over both orders: always right. Its own two orders still disagree.
    assert both.trials == 16 and both.accuracy == 1.0 and both.passed and both.flip_rate == 1.0
    assert judge_key("simulate", judge, both_orders=True) != judge_key("simulate", judge)


async def test_paper_exact_sees_the_right_reply_first_only_half_the_time(scripted, tmp_path):
    def always_first(messages, options):
        return audit_world(messages) or "first"

    config, backends, _ = _setup(scripted, tmp_path, always_first)
    result = await run_audit(config.model_copy(update={"paper_exact": True}), backends)
    assert result.accuracy == 0.5 and result.flip_rate == 1.0 and not result.passed


async def test_a_random_judges_interval_includes_chance(scripted, tmp_path):
    config, backends, _ = _setup(scripted, tmp_path, random_judge)
    result = await run_audit(config, backends)
    assert result.ci_low <= 0.5 <= result.ci_high and not result.passed
    assert 0.2 < result.flip_rate < 0.8


async def test_scorer_audit_counts_ties_and_unscored(scripted, tmp_path):
    config, backends, _ = _setup(scripted, tmp_path, perfect_judge, stage="eval")
    result = await run_audit(config, backends)
    assert result.accuracy == 1.0 and result.trials == 16 and result.tie_rate == 0.0 and result.flip_rate is None

    def constant(messages, options):
        return audit_world(messages) or "1"

    config, backends, _ = _setup(scripted, tmp_path, constant, stage="eval")
    result = await run_audit(config, backends)
    assert result.accuracy == 0.0 and result.tie_rate == 1.0 and not result.passed  # always 1: every probe a tie


async def test_reference_labels_give_kappa(scripted, tmp_path):
    persona = load_eval_personas("builtin")[0]
    mine = "for: " + " ".join(persona.profile.text.split()[:6])
    pairs = [([mine, "generic"], 0), (["generic", mine], 1)] * 3
    rows = [{"profile": persona.profile.text, "personality": persona.personality.text, "user_message": "hi",
             "replies": replies, "preferred": preferred} for replies, preferred in pairs]  # fmt: skip
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config, backends, _ = _setup(scripted, tmp_path, perfect_judge, personas=2)
    result = await run_audit(config, backends, read_labels(path))
    assert result.labels == {"rows": 6, "accuracy": 1.0, "kappa": 1.0, "invalid": 0}
    config, backends, _ = _setup(scripted, tmp_path, biased_judge, personas=2)
    biased = await run_audit(config, backends, read_labels(path))
    assert biased.labels["kappa"] < 0.5


@pytest.mark.parametrize(
    ("content", "message"),
    [("{bad", "labels.jsonl:1: invalid JSON"), ('{"profile": "p"}', "field 'personality'"),
     ('{"profile": "p", "personality": "q", "user_message": "u", "replies": ["a"], "preferred": 0}', "'replies'"),
     ('{"profile": "p", "personality": "q", "user_message": "u", "replies": ["a", "b"], "preferred": 2}',
      "'preferred' must be 0 or 1")],
)  # fmt: skip
def test_label_file_errors_name_the_line_and_field(tmp_path, content, message):
    from aloekit.errors import AloeError

    path = tmp_path / "labels.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(AloeError, match=re.escape(message)):
        read_labels(path)


def _stub_world(messages):
    """An OpenAI-compatible stub: a perfect scorer plus the user simulator and generator."""
    if (answer := audit_world(messages)) is not None:
        return answer
    return perfect_judge(messages, {})


def test_cli_audit_then_eval_reports_it(run_aloe, tmp_path):
    with StubOpenAIServer(respond=_stub_world) as server:
        spec = server.spec()
        before = run_aloe("eval", "--model", spec, "--role", f"user={spec}", "--role", f"judge={spec}",
                          "--personas", "2", "--turns", "1")  # fmt: skip
        assert before.returncode == 0, before.stderr
        assert "warning: judge" in before.stderr and "has no audit" in before.stderr
        audit = run_aloe("--json", "judge", "audit", "--role", f"judge={spec}", "--role", f"user={spec}",
                         "--personas", "6")  # fmt: skip
        assert audit.returncode == 0, audit.stderr
        result = json.loads(audit.stdout)
        assert result["passed"] and result["accuracy"] == 1.0 and result["stage"] == "eval"
        after = run_aloe("--json", "eval", "--model", spec, "--role", f"user={spec}", "--role", f"judge={spec}",
                         "--personas", "2", "--turns", "1")  # fmt: skip
    assert after.returncode == 0 and "warning" not in after.stderr
    run_id = json.loads(after.stdout)["run_id"]
    assert json.loads(after.stdout)["judge_audit"] == result["id"]
    report = run_aloe("report", run_id, "--out", "rep")
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert f"audit {result['id']}" in text and "better than chance" in text
    # The viewer shows it too: on the evaluation page, and on the page of the run that made the audit.
    from aloekit.viewer.render import eval_page, run_page

    store = Store(tmp_path / "aloe.db", readonly=True)
    assert "better than chance" in eval_page(store, run_id)[0]
    audit_run = store.conn.execute("SELECT run_id FROM judge_audits WHERE id = ?", [result["id"]]).fetchone()[0]
    page = run_page(store, audit_run)[0]
    assert 'id="audits"' in page and result["id"] in page and "generic 6/6" in page
    bad = run_aloe("judge", "audit", "--role", "boss=x")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --role expects judge=SPEC")


def test_persona_similarity_is_audited_and_scores_an_eval_without_a_model_call(run_aloe, tmp_path):
    (tmp_path / "aloe.toml").write_text(
        '[evaluation.judge]\nkind = "persona_similarity"\n[simulation.judge]\nkind = "persona_similarity"\n'
    )
    with StubOpenAIServer(respond=_stub_world) as server:
        spec = server.spec()
        audits = {}
        for stage in ("eval", "simulate"):
            proc = run_aloe("--json", "--config", "aloe.toml", "judge", "audit", "--stage", stage,
                            "--role", f"user={spec}", "--role", f"generator={spec}", "--personas", "6")  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            audits[stage] = json.loads(proc.stdout)
        calls_before = len(server.requests)
        proc = run_aloe("--json", "--config", "aloe.toml", "eval", "--model", spec, "--role", f"user={spec}",
                        "--personas", "2", "--turns", "2")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        # 2 personas x 2 turns x (user + model): the judge made no request.
        assert len(server.requests) - calls_before == 8
    # The stub's tailored replies name the persona's profile: the embedding judge tells them apart.
    for stage, audit in audits.items():
        assert audit["passed"] and audit["invalid"] == 0, (stage, audit["accuracy"])
    result = json.loads(proc.stdout)
    assert result["unscored"] == 0 and result["score_modes"] == ["similarity"] and result["judge_audit"]
    report = run_aloe("report", result["run_id"], "--out", "rep")
    assert report.returncode == 0 and "topical tailoring, not style" in (tmp_path / "rep" / "report.md").read_text()
    # As a second judge beside an LLM judge, its audit is named too.
    (tmp_path / "second.toml").write_text('[evaluation.second_judge]\nkind = "persona_similarity"\n')
    with StubOpenAIServer(respond=_stub_world) as server:
        spec = server.spec()
        proc = run_aloe("--config", "second.toml", "eval", "--model", spec, "--role", f"user={spec}",
                        "--role", f"judge={spec}", "--personas", "2", "--turns", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"second judge (persona_similarity, audit {audits['eval']['id']} passed): AVG" in proc.stdout
