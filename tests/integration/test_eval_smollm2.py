"""`aloe eval` with every role on the real SmolLM2, then `aloe report` with a readable PNG."""

import json

import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def test_eval_and_report_with_smollm2(run_aloe, tmp_path):
    (tmp_path / "aloe.toml").write_text(
        "[evaluation]\n"
        "model_generation = { max_tokens = 32, temperature = 0 }\n"
        'user = { kind = "user_simulator", generation = { max_tokens = 32, temperature = 0.7, seed = 1 } }\n'
    )
    proc = run_aloe("--json", "--config", "aloe.toml", "eval", "--model", "local:smollm2", "--personas", "2",
                    "--turns", "2", timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["statuses"] == {"complete": 2} and result["turns_saved"] == 4
    # The default judge (score mode auto) reads expected scores from the in-process model: every reply is
    # scored, and the scores are fractions, not the 135M model's near-constant "1".
    assert result["unscored"] == 0 and sum(result["scored"]) == 4 and result["score_modes"] == ["expected"]
    assert 1 < result["avg"] < 5
    share = result["option_share"]
    assert share["n"] == 4 and 0 < share["min"] <= share["mean"] <= 1
    report = run_aloe("report", result["run_id"], "--out", "report", timeout=300)
    assert report.returncode == 0, report.stderr
    with Image.open(tmp_path / "report" / "al_curve.png") as image:
        assert image.size[0] > 800 and image.size[1] > 300
    text = (tmp_path / "report" / "report.md").read_text()
    assert "local:smollm2" in text and "Scores are expected values" in text
    assert f"{result['run_id']}: The five scores held on average" in text
