"""Filtering 3,310 candidate personas into a pool: aloekit's incremental vectorised filter versus the
naive approach that re-encodes the whole pool for every candidate (as the authors' code does).

Ours is timed end to end (embedding included). The naive one is too slow to run in full, so its
per-candidate cost is measured at pool sizes 200, 400 and 800, fitted with a line (cost grows with
the pool), and summed over the pool sizes our own run went through.

Run: ``.venv/bin/python benchmarks/bench_persona_filter.py`` (target: ours under 60 s on 2 cores).
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from aloekit.personas import SimilarityFilter, get_embedder, seed_file
from aloekit.personas.io import read_persona_file

FIRST = "Ava Ben Chloe Dev Elif Farid Greta Hiro Ines Jonas Kemi Luca Mira Nils Olu Priya Quinn Rosa Sami Tariq".split()
JOBS = (
    "nurse, plumber, violinist, tax lawyer, beekeeper, ferry captain, data scientist, baker, zookeeper, "
    "firefighter, translator, potter, surgeon, bus driver, florist, astronomer, tailor, chess coach, roofer, "
    "midwife, sommelier, locksmith, glaciologist, puppeteer, stunt double"
).split(", ")
PLACES = (
    "a fishing village, a desert town, a high-rise in a megacity, a mountain hut, a canal boat, a university "
    "town, an island, a farm in the plains, a suburb full of cul-de-sacs, an old mining town"
).split(", ")
HOBBIES = (
    "free diving, model rockets, competitive baking, birdwatching, salsa dancing, restoring clocks, cave "
    "exploring, writing haiku, speedcubing, beekeeping, kite surfing, medieval re-enactment, foraging, "
    "amateur radio, stand-up comedy, ice fishing, calligraphy, rock climbing, quilting, opera singing"
).split(", ")
FAMILY = (
    "lives alone with a parrot, is raising triplets, cares for an elderly father, shares a flat with four "
    "students, is newly married, is a widower with grown-up sons, lives with her twin sister, has six cats"
).split(", ")


def synthetic_candidates(n: int, seed: int = 0) -> list[str]:
    """Deterministic, varied persona texts in the shape of profiles."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hobbies = rng.sample(HOBBIES, 2)
        out.append(
            f"{rng.choice(FIRST)} is a {rng.randint(18, 85)}-year-old {rng.choice(JOBS)} from {rng.choice(PLACES)} "
            f"who {rng.choice(FAMILY)}. In their free time they enjoy {hobbies[0]} and {hobbies[1]}."
        )
    return out


def naive_cost_per_candidate(embedder, pool_texts: list[str], candidate: str, threshold: float) -> float:
    """One candidate the naive way: encode the whole pool and the candidate again, then compare."""
    started = time.perf_counter()
    vectors = embedder.embed([*pool_texts, candidate])
    bool(((vectors[:-1] @ vectors[-1]) <= threshold).all())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=3310)
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--round-size", type=int, default=20, help="candidates checked per generation round")
    args = parser.parse_args()

    embedder = get_embedder("minilm")
    embedder.embed(["warm up"])
    seeds = [p.text for p in read_persona_file(seed_file("profile"), "profile").personas]
    candidates = synthetic_candidates(args.candidates)

    # Ours: seeds encoded once, then each round's candidates encoded once and checked with one product.
    started = time.perf_counter()
    diversity = SimilarityFilter(embedder.embed(seeds), args.threshold)
    checkpoints = {800, 1600, 2400}
    pool_sizes = []  # pool size seen by each candidate, for the naive extrapolation
    for start in range(0, len(candidates), args.round_size):
        batch = candidates[start : start + args.round_size]
        before = diversity.size
        admitted = diversity.admit(embedder.embed(batch))
        pool_sizes += [before + sum(admitted[:i]) for i in range(len(batch))]
        done = start + len(batch)
        if done in checkpoints or done == len(candidates):
            print(f"ours:  {done:>5} candidates in {time.perf_counter() - started:5.1f}s")
    ours_s = time.perf_counter() - started
    print(f"ours:  {len(candidates)} candidates -> pool of {diversity.size} in {ours_s:.1f}s "
          f"({1000 * ours_s / len(candidates):.2f} ms per candidate, embedding included)")  # fmt: skip

    # Naive: per-candidate cost at three pool sizes, fitted by least squares.
    filler = synthetic_candidates(800, seed=1)
    sizes, costs = [], []
    for n in (200, 400, 800):
        cost = min(naive_cost_per_candidate(embedder, filler[:n], candidates[0], args.threshold) for _ in range(2))
        sizes.append(n)
        costs.append(cost)
        print(f"naive: pool of {n}: {1000 * cost:.0f} ms per candidate")
    slope, intercept = np.polyfit(sizes, costs, 1)
    print(f"naive: cost grows by {1000 * slope * 200:.0f} ms per candidate for every 200 pooled texts "
          f"(cost(800)/cost(200) = {costs[2] / costs[0]:.1f}; linear in pool size, so quadratic in total)")  # fmt: skip
    naive_s = float(sum(intercept + slope * n for n in pool_sizes))
    print(f"naive: estimated {naive_s:.0f}s for the same run (same pool sizes)")
    worst_s = float(sum(intercept + slope * (len(seeds) + i) for i in range(len(candidates))))
    print(
        f"naive: estimated {worst_s:.0f}s if every candidate were kept (pool growing to {len(seeds) + len(candidates)})"
    )
    print(f"ratio: naive / ours = {naive_s / ours_s:.1f}x for this run, {worst_s / ours_s:.1f}x when all are kept")


if __name__ == "__main__":
    main()
