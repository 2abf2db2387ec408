"""2 GRPO steps on the real SmolLM2 (policy, user simulator and judge), G = 2, 1 persona, 2 turns; then a chat."""

import json

import pytest

pytestmark = pytest.mark.integration


def test_grpo_on_smollm2_then_chat(run_aloe, tmp_path):
    proc = run_aloe("--json", "train", "grpo", "--out", "grpo", "--personas", "1", "--turns", "2", "--group", "2",
                    "--max-steps", "2", "--max-completion-length", "24", timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 2 and summary["base"] == "local:smollm2"
    # The default judge on the embedded model reads expected scores: fractions in 1-5, none unscored.
    assert all(1 <= r <= 5 for r in summary["rewards_per_step"]) and summary["unscored_replies"] == 0
    chat = run_aloe("--json", "chat", f"local:smollm2+{tmp_path / 'grpo'}", "Hi! I just got back from a long hike.",
                    timeout=600)  # fmt: skip
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert json.loads(chat.stdout)["reply"].strip()
