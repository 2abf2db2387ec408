import math

import pytest

from aloekit.evaluation import bootstrap, compare, compute_metrics, fit_line, normalize
from aloekit.evaluation.metrics import holm, signed_rank
from aloekit.evaluation.report import format_interval, format_value


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


def test_a_curve_flat_but_for_rounding_is_flat():
    # The three AL(k) are all 2.2, but the last is computed as 2.1999999999999997: exact tests gave
    # R2 0, N-AL [1, 1, 0] and N-IR -0.5.
    scores = {"a": {1: 2.2, 2: 2.2, 3: 1.1}, "b": {1: 2.2, 2: 2.2, 3: 2.2}, "c": {1: 2.2, 2: 2.2, 3: 3.3}}
    m = compute_metrics(scores, 3)
    assert m.al[2] != m.al[0]  # the rounding this test is about
    assert (m.ir, m.r2) == (0.0, 1.0) and m.n_al == [0.0, 0.0, 0.0] and (m.n_ir, m.n_r2) == (0.0, 1.0)


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
    assert math.isnan(fit_line([]).intercept) and math.isnan(fit_line([4]).slope)  # one point: no slope, not 0
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


def test_a_negative_run_seed_resamples_reproducibly():
    # Runs allow seeds down to SQLite's smallest integer; numpy's generators take none below 0.
    scores = {f"p{i}": {1: 1 + i % 5, 2: 2 + i % 4} for i in range(6)}
    cis = bootstrap(scores, 2, n_boot=50, seed=-3)
    assert cis == bootstrap(scores, 2, n_boot=50, seed=-3) and cis != bootstrap(scores, 2, n_boot=50, seed=3)
    assert compare(scores, scores, 2, n_boot=20, seed=-(2**63)).avg_diff.value == 0.0


def test_one_persona_gives_no_interval():
    # Its every resample is itself: a zero-width band would read as certainty.
    cis = bootstrap({"p": {1: 1, 2: 3}}, 2, n_boot=50)
    assert (cis.avg.value, cis.ir.value) == (2.0, 2.0)
    assert format_interval(cis.avg) == "2.000 [n/a, n/a]" and all(math.isnan(ci.low) for ci in cis.al)
    c = compare({"p": {1: 1, 2: 3}}, {"p": {1: 2, 2: 5}}, 2, n_boot=50)
    assert c.avg_diff.value == 1.5 and math.isnan(c.avg_diff.low) and math.isnan(c.ir_diff.high)


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


def test_nothing_scored_is_not_applicable_never_zero():
    scores = {"a": {1: None, 2: None}, "b": {1: None, 2: None}}
    m = compute_metrics(scores, 2)
    assert all(math.isnan(v) for v in (m.avg, m.ir, m.r2, m.n_ir, m.n_r2))
    cis = bootstrap(scores, 2, n_boot=50)
    assert format_interval(cis.ir) == "n/a [n/a, n/a]" and format_interval(cis.avg) == "n/a [n/a, n/a]"
    assert format_value(m.ir) == "n/a" and format_value(0.0) == "0.000"


def test_bootstrap_gives_intervals_for_r2_and_n_ir_too():
    scores = {f"p{i}": {1: 1 + i % 3, 2: 2 + i % 2, 3: 3 + i % 3, 4: 4 - i % 2} for i in range(20)}
    cis = bootstrap(scores, 4, n_boot=200, seed=3)
    point = compute_metrics(scores, 4)
    assert cis.r2.value == point.r2 and cis.n_ir.value == point.n_ir
    assert cis.r2.low <= cis.r2.high and cis.n_ir.low <= cis.n_ir.value <= cis.n_ir.high


def test_holm_on_a_known_p_vector():
    # Sorted 0.01, 0.02, 0.03, 0.04 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.06; None is not a test.
    adjusted = holm([0.03, 0.01, None, 0.04, 0.02])
    assert adjusted == pytest.approx([0.06, 0.04, None, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_wilcoxon_uses_only_the_turns_compared():
    # Run A has 3 turns; run B only 2. Turn 3 of A (very high) must not enter the per-persona means.
    a = {f"p{i}": {1: 2, 2: 2, 3: 5} for i in range(6)}
    b = {f"p{i}": {1: 3, 2: 3} for i in range(6)}
    c = compare(a, b, 2, n_boot=50)
    assert c.wilcoxon_n == 6 and c.wilcoxon_p == pytest.approx(0.03125)  # all six favour B over turns 1-2
    # A turn unscored in one run is left out for that persona only.
    b["p0"][2] = None
    c = compare(a, b, 2, n_boot=50)
    assert c.turn_n == [6, 5] and c.wilcoxon_n == 6


def test_a_turn_one_run_left_unscored_is_no_difference():
    # Every score both runs gave is the same; B left p's second turn unscored. Before, A's 5 there still
    # counted for A alone: AVG difference -0.583, IR and AL(2) differences -1.17.
    a = {"p": {1: 1, 2: 5}, "q": {1: 1, 2: 1}, "r": {1: 2, 2: 2}}
    b = {**a, "p": {1: 1, 2: None}}
    c = compare(a, b, 2, n_boot=100)
    assert (c.avg_diff.value, c.avg_diff.low, c.avg_diff.high) == (0.0, 0.0, 0.0)
    assert c.ir_diff.value == 0.0 and [d.value for d in c.al_diff] == [0.0, 0.0]
    assert c.turn_n == [3, 2] and c.wilcoxon_p == 1.0


def test_per_turn_tests_are_holm_corrected():
    a = {f"p{i}": {k: 3 for k in range(1, 6)} for i in range(8)}
    b = {pid: {k: (4 if k == 1 else 3) for k in turns} for pid, turns in a.items()}
    c = compare(a, b, 5, n_boot=50)
    assert c.turn_p[0] == pytest.approx(0.0078125) and c.turn_p[1:] == [1.0] * 4
    assert c.turn_p_holm[0] == pytest.approx(5 * 0.0078125) and c.turns_differing == [1]


def test_no_difference_flags_few_turns():
    # With no real difference, uncorrected per-turn tests flag some turn in ~40% of 10-turn comparisons.
    import numpy as np

    rng = np.random.default_rng(0)
    raw = corrected = 0
    for _ in range(8):
        a = {f"p{i}": {k: int(rng.integers(1, 6)) for k in range(1, 11)} for i in range(10)}
        b = {f"p{i}": {k: int(rng.integers(1, 6)) for k in range(1, 11)} for i in range(10)}
        c = compare(a, b, 10, n_boot=0)
        raw += any(p is not None and p < 0.05 for p in c.turn_p)
        corrected += bool(c.turns_differing)
    assert corrected <= 1 < raw  # Holm keeps the family-wise error near 5%


@pytest.mark.parametrize(
    "differences",
    [
        [1.0, 1.0, 2.0, -1.0, 0.0, 3.0, 1.0, 2.0, -2.0, 1.0],  # ties and a zero: the sign-flip enumeration
        [0.5, 0.5, 0.5, 0.5],
        [-1.0, 0.0, 0.0],
        [0.3, -1.2, 2.5, 0.7, -0.1, 1.9],  # no ties: scipy's exact table
        [1.0, 2.0, 1.0, -1.0, 2.0, 3.0, 1.0, 1.0, -2.0, 2.0, 1.0, 3.0, 2.0, 1.0],  # 14 tied: normal approximation
    ],
)
def test_signed_rank_gives_scipys_wilcoxon(differences):
    from scipy.stats import wilcoxon

    reference = wilcoxon(differences)
    assert signed_rank(differences) == (float(reference.statistic), float(reference.pvalue))


def test_a_comparison_too_small_for_any_per_turn_test_says_so():
    from dataclasses import asdict

    from aloekit.evaluation.report import comparison_lines

    a = {f"p{i}": {1: 2, 2: 2} for i in range(8)}
    b = {pid: {1: 4, 2: 4} for pid in a}
    few = comparison_lines(asdict(compare({p: a[p] for p in list(a)[:5]}, b, 2, n_boot=10)))
    assert "- with at most 5 personas paired at a turn, no per-turn test can reach p < 0.05 (the smallest " \
           "possible p is 0.0625)" in "\n".join(few)  # fmt: skip
    means = "- with 5 personas the signed-rank test on their means cannot reach p < 0.05 (the smallest possible p"
    assert means in "\n".join(few)
    assert not any("no per-turn test" in line for line in comparison_lines(asdict(compare(a, b, 2, n_boot=10))))


def test_a_persona_never_scored_does_not_make_an_interval():
    # One persona scored and one never: one persona's worth of data, so no interval (it was [3.5, 3.5]).
    cis = bootstrap({"p1": {1: 3, 2: 4}, "p2": {1: None, 2: None}}, 2, n_boot=50)
    assert cis.avg.value == 3.5 and math.isnan(cis.avg.low)
    c = compare({"p1": {1: 3, 2: 4}, "p2": {1: 2, 2: None}}, {"p1": {1: 4, 2: 4}, "p2": {1: None, 2: 5}}, 2, n_boot=50)
    assert c.personas == 1 and c.avg_diff.value == 0.5 and math.isnan(c.avg_diff.low)
    with pytest.raises(ValueError, match="scored no turn of a shared persona both"):
        compare({"p": {1: 3}}, {"p": {1: None}}, 1)
