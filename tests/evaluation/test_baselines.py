"""Evaluation baselines: the prompting ones (reminder, cot, self-critique) on scripted models, and the registry."""

from __future__ import annotations

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.agents.prompting import COT_NOTES_PROMPT, CRITIQUE_PROMPT
from aloekit.config import AloeConfig
from aloekit.evaluation import EvalConfig, EvalStore, create_eval_conversations, run_evaluation
from aloekit.evaluation.baselines import REMINDER_PROMPT, Baseline, list_baselines, register_baseline
from aloekit.store import Store
from tests.helpers import ScriptedClient


def user(messages, options):
    return f"user message {sum(m['role'] == 'assistant' for m in messages) + 1}, I love sailing"


def model(messages, options):
    assert all("Profile:" not in m["content"] for m in messages)  # a prompting baseline never sees the persona
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if system == COT_NOTES_PROMPT:
        return "notes: likes sailing"
    if system == CRITIQUE_PROMPT:
        return "critique: mention sailing"
    if "draft reply" in system:
        return "final: let's talk sailing"
    if "private notes" in system:
        return "reply using the notes"
    return "draft: hello"


def judge(messages, options):
    return "3"


async def evaluate(scripted, tmp_path, baseline: str, turns: int = 2):
    specs = {name: scripted(f"{name}-{baseline}", ScriptedClient(fn))
             for name, fn in (("user", user), ("model", model), ("judge", judge))}  # fmt: skip
    config = EvalConfig(model=specs["model"], personas=1, turns=turns, baseline=baseline)
    config = config.with_backend("user", specs["user"]).with_backend("judge", specs["judge"])
    store = Store(tmp_path / "aloe.db")
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store)
    run_id = store.start_run("eval", {"eval_resolved": config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, run_id, config)
    summary = await run_evaluation(store, backends, config, run_id)
    assert summary.statuses == {"complete": 1}
    return EvalStore(store).records(f"{run_id}-0000")


async def test_reminder_is_told_to_adapt_and_nothing_else(scripted, tmp_path):
    records = await evaluate(scripted, tmp_path, "reminder")
    (call,) = records[1].model_calls
    assert call.messages[0] == {"role": "system", "content": REMINDER_PROMPT}
    assert [m["role"] for m in call.messages[1:]] == ["user", "assistant", "user"]
    assert records[1].reply == "draft: hello" and records[1].score.score == 3.0


async def test_cot_writes_notes_then_replies_with_them(scripted, tmp_path):
    records = await evaluate(scripted, tmp_path, "cot")
    notes, reply = records[1].model_calls
    assert notes.messages[0]["content"] == COT_NOTES_PROMPT and "I love sailing" in notes.messages[1]["content"]
    assert "notes: likes sailing" in reply.messages[0]["content"]
    assert records[1].reply == "reply using the notes"  # the notes are never the reply the user sees


async def test_self_critique_drafts_critiques_and_rewrites(scripted, tmp_path):
    records = await evaluate(scripted, tmp_path, "self-critique")
    draft, critique, final = records[0].model_calls
    assert draft.raw == "draft: hello" and "Draft reply:\ndraft: hello" in critique.messages[1]["content"]
    assert "critique: mention sailing" in final.messages[0]["content"]
    assert records[0].reply == "final: let's talk sailing"


def test_a_plugin_registers_a_baseline_and_unknown_names_fail_in_one_line():
    assert list_baselines()[:5] == ["blind", "oracle", "reminder", "cot", "self-critique"]
    register_baseline(Baseline("terse", "told to be terse", options={"system_prompt": "Be terse."}))
    role = EvalConfig(model="replay:x.json", baseline="terse").model_role()
    assert role.kind == "model_under_test" and role.options == {"system_prompt": "Be terse."}
    with pytest.raises(ValueError, match=r"unknown baseline 'nosuch' \(known: blind, oracle, reminder, cot"):
        EvalConfig(model="replay:x.json", baseline="nosuch")


def test_the_cli_names_the_bad_baseline(run_aloe):
    proc = run_aloe("eval", "--model", "local:smollm2", "--baseline", "nosuch")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: flag --baseline: field evaluation.baseline:") and "unknown baseline 'nosuch'" in line
