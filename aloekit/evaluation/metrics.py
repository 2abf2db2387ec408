"""ALOE metrics: AL(k), AVG, IR (least-squares slope of AL over k), R2, and their min-max normalised
forms N-AL, N-IR, N-R2; bootstrap confidence intervals over personas; paired comparison of two runs
(Wilcoxon signed-rank from scipy, Holm's step-down correction across turns).

Anything that cannot be computed (nothing scored, a one-point curve) is NaN, shown as "n/a", never 0."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

N_BOOT = 1000
"""Bootstrap resamples behind every interval aloekit shows (viewer, ``aloe report``, ``aloe compare``)."""
FLAT = 1e-9
"""A curve whose values span no more than this is flat: expected scores are sums of products, so a curve
whose means are equal can differ in the last bits (2.2 against 2.1999999999999997)."""
MIN_PERSONAS_FOR_CI = 2
"""Fewer personas than this give no interval: one persona's resamples are all itself, a zero-width band."""

# scores[persona_id][k] is the judge's 1-5 score of the model's reply at turn k (1-based; a fraction with
# expected scores), or None when the judge's answer was unusable (unscored: excluded, and counted).
Scores = Mapping[str, Mapping[int, float | None]]


def bootstrap_rng(seed: int) -> np.random.Generator:
    """The resampling generator for a run's seed; a negative seed (runs allow them) is taken modulo 2^64, since
    numpy's take none."""
    return np.random.default_rng(seed % 2**64)


@dataclass
class LineFit:
    """Least-squares fit AL(k) = slope * k + intercept over k = 1..K."""

    slope: float
    intercept: float
    r2: float


def fit_line(values: list[float]) -> LineFit:
    """Closed-form least squares over k = 1..K (NaN points skipped). A flat curve (within :data:`FLAT`) is
    fitted exactly (slope 0, R2 1); fewer than two points give NaN: no slope can be measured."""
    k = np.arange(1, len(values) + 1, dtype=float)
    y = np.asarray(values, dtype=float)
    mask = ~np.isnan(y)
    k, y = k[mask], y[mask]
    if len(y) < 2:
        return LineFit(slope=math.nan, intercept=math.nan, r2=math.nan)
    k_bar, y_bar = k.mean(), y.mean()
    if np.ptp(y) <= FLAT:
        return LineFit(slope=0.0, intercept=float(y_bar), r2=1.0)
    slope = float(((k - k_bar) * (y - y_bar)).sum() / ((k - k_bar) ** 2).sum())
    intercept = float(y_bar - slope * k_bar)
    ss_tot = float(((y - y_bar) ** 2).sum())
    ss_res = float(((y - (slope * k + intercept)) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot
    return LineFit(slope, intercept, r2)


def normalize(values: list[float], method: str = "minmax") -> list[float]:
    """Min-max normalise a curve over its own range; a flat curve (within :data:`FLAT`) maps to all zeros."""
    if method != "minmax":
        raise ValueError(f"unknown normalisation {method!r} (supported: minmax)")
    y = np.asarray(values, dtype=float)
    if np.isnan(y).all():
        return [math.nan] * len(y)
    lo, hi = np.nanmin(y), np.nanmax(y)
    if hi - lo <= FLAT:
        return [0.0 if not math.isnan(v) else math.nan for v in y]
    return [float(v) for v in (y - lo) / (hi - lo)]


def al_curve(scores: Scores, turns: int) -> tuple[list[float], list[int]]:
    """AL(k) for k = 1..turns (NaN where nobody was scored) and how many personas were scored at each k."""
    curve, counts = [], []
    for k in range(1, turns + 1):
        values = [s[k] for s in scores.values() if s.get(k) is not None]
        curve.append(float(np.mean(values)) if values else math.nan)
        counts.append(len(values))
    return curve, counts


@dataclass
class Metrics:
    """Every ALOE metric for one run."""

    al: list[float]
    scored: list[int]
    unscored: int
    avg: float
    ir: float
    intercept: float
    r2: float
    n_al: list[float]
    n_ir: float
    n_r2: float


def compute_metrics(scores: Scores, turns: int, normalization: str = "minmax") -> Metrics:
    """AL(k), AVG, IR, intercept, R2 and the normalised N-AL, N-IR, N-R2."""
    al, scored = al_curve(scores, turns)
    fit = fit_line(al)
    n_al = normalize(al, normalization)
    n_fit = fit_line(n_al)
    unscored = sum(1 for s in scores.values() for k, v in s.items() if v is None and k <= turns)
    return Metrics(
        al=al, scored=scored, unscored=unscored, avg=float(np.nanmean(al)) if scored and any(scored) else math.nan,
        ir=fit.slope, intercept=fit.intercept, r2=fit.r2, n_al=n_al, n_ir=n_fit.slope, n_r2=n_fit.r2,
    )  # fmt: skip


@dataclass
class Interval:
    """A point estimate with a 95% bootstrap confidence interval."""

    value: float
    low: float
    high: float


@dataclass
class BootstrapCIs:
    """95% bootstrap CIs (personas resampled) for AVG, IR, R2, N-IR and each AL(k)."""

    avg: Interval
    ir: Interval
    r2: Interval
    n_ir: Interval
    al: list[Interval] = field(default_factory=list)


def _percentile_interval(value: float, samples: list[float]) -> Interval:
    clean = [s for s in samples if not math.isnan(s)]
    if not clean or math.isnan(value):
        return Interval(value, math.nan, math.nan)
    low, high = np.percentile(clean, [2.5, 97.5])
    return Interval(value, float(low), float(high))


def bootstrap(scores: Scores, turns: int, n_boot: int = N_BOOT, seed: int = 0) -> BootstrapCIs:
    """Resample the personas scored at some turn with replacement ``n_boot`` times; percentile intervals (none
    for fewer than :data:`MIN_PERSONAS_FOR_CI` such personas: one scored and one unscored is one)."""
    ids = sorted(pid for pid, by_turn in scores.items() if any(by_turn.get(k) is not None for k in range(1, turns + 1)))
    point = compute_metrics(scores, turns)
    rng = bootstrap_rng(seed)
    samples: dict[str, list[float]] = {"avg": [], "ir": [], "r2": [], "n_ir": []}
    als: list[list[float]] = [[] for _ in range(turns)]
    for _ in range(n_boot if len(ids) >= MIN_PERSONAS_FOR_CI else 0):
        sample = {f"{i}:{pid}": scores[pid] for i, pid in enumerate(rng.choice(ids, size=len(ids), replace=True))}
        m = compute_metrics(sample, turns)
        for name, values in samples.items():
            values.append(getattr(m, name))
        for k, v in enumerate(m.al):
            als[k].append(v)
    return BootstrapCIs(
        **{name: _percentile_interval(getattr(point, name), values) for name, values in samples.items()},
        al=[_percentile_interval(point.al[k], als[k]) for k in range(turns)],
    )


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of ``p_values`` (None stays None: no test was possible).

    Written here because scipy has no Holm correction and statsmodels would be a dependency for one function.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def signed_rank(differences: list[float]) -> tuple[float | None, float | None]:
    """Two-sided Wilcoxon signed-rank test (scipy) of paired differences: (statistic, p).

    p is 1.0 when every difference is zero (no evidence of any), and None when there are none.
    """
    if not differences:
        return None, None
    if all(d == 0 for d in differences):
        return None, 1.0
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    nonzero = d[d != 0]
    tied = len(nonzero) < len(d) or len(np.unique(np.abs(nonzero))) < len(nonzero)
    if not tied or len(d) > EXHAUSTIVE_SIGNED_RANK or not np.isfinite(d).all():  # scipy's table or approximation
        result = wilcoxon(d)
        return float(result.statistic), float(result.pvalue)
    statistic = float(wilcoxon(d, method="asymptotic").statistic)  # the same statistic whatever the method
    return statistic, exhaustive_signed_rank_p(d)


def smallest_signed_rank_p(n: int) -> float:
    """The smallest p a two-sided signed-rank test of ``n`` differences can give, all of one sign: 2 / 2^n (with 5
    or fewer, never below 0.05)."""
    return 2 / 2**n


EXHAUSTIVE_SIGNED_RANK = 13
"""Up to this many differences with ties or zeros, scipy's ``wilcoxon`` enumerates all 2^n sign flips."""


def exhaustive_signed_rank_p(d: np.ndarray) -> float:
    """Two-sided signed-rank p by all 2^n sign flips: the permutation test scipy's ``wilcoxon`` runs on tied
    or zero differences, with the rank sum computed for every flip at once. scipy evaluates it one flip at a
    time (0.7 s for 10 differences, 6 s for 13, per call; a comparison makes one call per turn)."""
    from scipy.stats import permutation_test, rankdata

    ranks = np.zeros_like(d)
    ranks[d != 0] = rankdata(np.abs(d[d != 0]))  # zeros dropped (Wilcoxon's rule, scipy's default)

    def positive_rank_sum(x: np.ndarray, axis: int) -> np.ndarray:  # flips keep |x|, hence each rank
        return np.sum((x > 0) * ranks, axis=axis)

    result = permutation_test((d,), positive_rank_sum, permutation_type="samples", vectorized=True,
                              n_resamples=2 ** len(d), alternative="two-sided")  # fmt: skip
    return float(result.pvalue)


@dataclass
class Comparison:
    """Run B minus run A on the personas both scored, over turns 1..``turns``."""

    personas: int
    """Shared personas with at least one turn both runs scored."""
    turns: int
    avg_diff: Interval
    ir_diff: Interval
    wilcoxon_statistic: float | None
    wilcoxon_p: float | None
    """Signed-rank test on per-persona mean scores over the compared turns scored in both runs."""
    wilcoxon_n: int
    """Personas in that test."""
    turn_p: list[float | None]
    """Per turn: signed-rank p on the paired scores at that turn (None: nothing paired)."""
    turn_p_holm: list[float | None]
    """The same, Holm-adjusted across turns."""
    turn_n: list[int]
    """Per turn: personas scored at that turn in both runs."""
    turns_differing: list[int]
    """Turns whose Holm-adjusted p is below ``alpha``."""
    al_diff: list[Interval]
    alpha: float = 0.05


def persona_means(scores: Scores, turns_by_persona: Mapping[str, set[int]]) -> dict[str, float]:
    """Each persona's mean score over the turns listed for it (personas with none are left out)."""
    out = {}
    for pid, turns in turns_by_persona.items():
        values = [v for k, v in scores[pid].items() if k in turns and v is not None]
        if values:
            out[pid] = float(np.mean(values))
    return out


def compare(a: Scores, b: Scores, turns: int, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05) -> Comparison:
    """Paired comparison of B - A on shared personas over turns 1..``turns``, on the (persona, turn) cells
    both runs scored: a turn one run left unscored is left out of both, so it cannot pass for a difference.

    Paired-bootstrap CIs for AVG, IR and each AL(k) (none for fewer than :data:`MIN_PERSONAS_FOR_CI`
    personas); a Wilcoxon signed-rank test on per-persona means over those cells; a signed-rank test per
    turn, Holm-adjusted across turns.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no personas")
    compared = {pid: {k for k in range(1, turns + 1) if a[pid].get(k) is not None and b[pid].get(k) is not None}
                for pid in common}  # fmt: skip
    compared = {pid: turns_both for pid, turns_both in compared.items() if turns_both}  # others add nothing
    common = sorted(compared)
    if not common:
        raise ValueError("the two runs scored no turn of a shared persona both")
    a = {pid: {k: a[pid][k] for k in compared[pid]} for pid in common}
    b = {pid: {k: b[pid][k] for k in compared[pid]} for pid in common}
    rng = bootstrap_rng(seed)

    def stat(scores: Scores, ids: list[str]) -> Metrics:
        return compute_metrics({f"{i}:{pid}": scores[pid] for i, pid in enumerate(ids)}, turns)

    base_a, base_b = stat(a, common), stat(b, common)
    avg_d, ir_d, al_d = [], [], [[] for _ in range(turns)]
    for _ in range(n_boot if len(common) >= MIN_PERSONAS_FOR_CI else 0):
        ids = list(rng.choice(common, size=len(common), replace=True))
        ma, mb = stat(a, ids), stat(b, ids)
        avg_d.append(mb.avg - ma.avg)
        ir_d.append(mb.ir - ma.ir)
        for k in range(turns):
            al_d[k].append(mb.al[k] - ma.al[k])
    al_diff = [_percentile_interval(base_b.al[k] - base_a.al[k], al_d[k]) for k in range(turns)]

    means_a, means_b = persona_means(a, compared), persona_means(b, compared)
    paired = [means_b[p] - means_a[p] for p in common if p in means_a and p in means_b]
    statistic, p_value = signed_rank(paired)
    per_turn = [[b[p][k] - a[p][k] for p in common if k in compared[p]] for k in range(1, turns + 1)]
    turn_p = [signed_rank(d)[1] for d in per_turn]
    adjusted = holm(turn_p)
    return Comparison(
        personas=len(common),
        turns=turns,
        avg_diff=_percentile_interval(base_b.avg - base_a.avg, avg_d),
        ir_diff=_percentile_interval(base_b.ir - base_a.ir, ir_d),
        wilcoxon_statistic=statistic,
        wilcoxon_p=p_value,
        wilcoxon_n=len(paired),
        turn_p=turn_p,
        turn_p_holm=adjusted,
        turn_n=[len(d) for d in per_turn],
        turns_differing=[k + 1 for k, p in enumerate(adjusted) if p is not None and p < alpha],
        al_diff=al_diff,
        alpha=alpha,
    )
