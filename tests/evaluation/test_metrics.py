import math

import pytest

from aloekit.evaluation import bootstrap, compare, compute_metrics, fit_line, normalize


def curve_scores(al):
    """One persona whose scores are the curve itself."""
    return {"p": {k: v for k, v in enumerate(al, start=1)}}


def test_rising_curve():
    m = compute_metrics(curve_scores([1, 2, 3, 4, 5]), 5)
    assert (m.avg, m.ir, m.intercept, m.r2) == (3.0, 1.0, 0.0, 1.0)
    assert m.n_al == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert m.n_ir == pytest.approx(0.25) and m.n_r2 == pytest.approx(m.r2)


def test_flat_curve_is_defined():
    m = compute_metrics(curve_scores([3, 3, 3]), 3)
    assert (m.avg, m.ir, m.intercept, m.r2) == (3.0, 0.0, 3.0, 1.0)
    assert m.n_al == [0.0, 0.0, 0.0] and m.n_ir == 0.0 and m.n_r2 == m.r2  # min = max: no division by zero


def test_noisy_curve_by_hand():
    # k = 1..4, AL = 2, 4, 3, 5: slope = 4 / 5 = 0.8, intercept = 3.5 - 0.8 * 2.5 = 1.5,
    # fitted 2.3, 3.1, 3.9, 4.7, SSres = 1.8, SStot = 5, R2 = 0.64.
    m = compute_metrics(curve_scores([2, 4, 3, 5]), 4)
    assert m.avg == 3.5
    assert (m.ir, m.intercept, m.r2) == pytest.approx((0.8, 1.5, 0.64))
    assert m.n_al == pytest.approx([0, 2 / 3, 1 / 3, 1])
    assert m.n_ir == pytest.approx(0.8 / 3) and m.n_r2 == pytest.approx(m.r2)


@pytest.mark.parametrize("al", [[1, 5, 2, 4, 3], [2.5, 2.7, 2.6, 3.1], [4, 1, 4, 1, 4, 1]])
def test_normalised_r2_equals_raw_r2(al):
    m = compute_metrics(curve_scores(al), len(al))
    assert m.n_r2 == pytest.approx(m.r2)


def test_al_is_the_mean_over_scored_personas_and_unscored_are_counted():
    scores = {"a": {1: 2, 2: 4}, "b": {1: 4, 2: None}, "c": {1: 3, 2: 5}}
    m = compute_metrics(scores, 2)
    assert m.al == [3.0, 4.5] and m.scored == [3, 2] and m.unscored == 1


def test_fit_line_and_normalize_edges():
    assert math.isnan(fit_line([]).intercept) and fit_line([4]).slope == 0.0
    assert normalize([2, 2]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize([1, 2], "zscore")


def test_bootstrap_intervals():
    scores = {f"p{i}": {1: 1 + i % 5, 2: 2 + i % 4, 3: 3 + i % 3} for i in range(30)}
    cis = bootstrap(scores, 3, n_boot=300, seed=1)
    assert cis.avg.low <= cis.avg.value <= cis.avg.high and cis.avg.low < cis.avg.high
    assert all(ci.low <= ci.value <= ci.high for ci in cis.al)
    assert bootstrap(scores, 3, n_boot=300, seed=1) == cis  # seeded
    same = bootstrap({f"p{i}": {1: 3, 2: 3} for i in range(5)}, 2, n_boot=50)
    assert (same.avg.low, same.avg.high) == (3.0, 3.0)


def test_paired_comparison():
    a = {f"p{i}": {1: 1 + i % 3, 2: 2 + i % 2, 3: 2} for i in range(8)}
    b = {pid: {k: v + 1 for k, v in turns.items()} for pid, turns in a.items()}
    c = compare(a, b, 3, n_boot=200)
    assert c.personas == 8 and (c.avg_diff.value, c.avg_diff.low, c.avg_diff.high) == pytest.approx((1, 1, 1))
    assert c.ir_diff.value == pytest.approx(0.0)
    assert c.wilcoxon_p == pytest.approx(0.0078125)  # 8 positive differences, exact two-sided test
    assert c.turns_differing == [1, 2, 3]
    with pytest.raises(ValueError, match="share no personas"):
        compare(a, {"other": {1: 3}}, 3)
