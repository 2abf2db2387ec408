"""Time of SmolLM2-135M's Q4_1 products for one decoding step (30 layers: q/k/v joined, o, gate/up joined, down;
120 calls) through the compiled int8 dot kernel and through torch's int4 kernel, for 1, 8 and 16 rows: the
weights random codes of those shapes, cycled so that they come from memory as in a step. Each figure is the
best of ``--repeats`` passes, the two kernels taking turns; the ratio is torch's time over the int8 dot one's.

Run: ``.venv/bin/python benchmarks/bench_q4_1_dot.py`` (under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from aloekit.agents.backends.packed import _q4_matmul
from aloekit.agents.backends.q4_1_dot import Q4_1DotMatmul, q4_1_dot_missing
from aloekit.cpu_thread import call_on_cpu_thread

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # outputs x inputs: q/k/v, o, gate/up, down


def step_time(matmuls: list[Any], inputs: dict[int, Any]) -> float:
    """Seconds for one pass over ``matmuls`` (in SHAPES order, layer after layer)."""
    started = time.perf_counter()
    for index, matmul in enumerate(matmuls):
        matmul(inputs[SHAPES[index % len(SHAPES)][1]])
    return time.perf_counter() - started


def measure(rows_list: list[int], repeats: int) -> dict[int, tuple[float, float]]:
    """For each row count, the best time of the int8 dot kernel and of torch's int4 kernel, in seconds."""
    import torch

    rng = np.random.default_rng(0)
    kernels: dict[str, list[Any]] = {"int8 dot": [], "int4": []}
    for _ in range(LAYERS):
        for outputs, inputs in SHAPES:
            codes = rng.integers(0, 16, (outputs, inputs)).astype(np.uint8)
            scales = rng.uniform(0.001, 0.01, (outputs, inputs // 32)).astype(np.float16).astype(np.float32)
            minimums = (-8 * scales).astype(np.float16).astype(np.float32)
            kernels["int8 dot"].append(Q4_1DotMatmul.from_blocks(codes, scales, minimums))
            kernels["int4"].append(_q4_matmul(codes, scales, minimums))
    results = {}
    with torch.inference_mode():
        for rows in rows_list:
            inputs = {k: torch.randn(rows, k).bfloat16() for k in {k for _, k in SHAPES}}
            best = {name: float("inf") for name in kernels}
            for repeat in range(repeats + 1):  # the first pass warms up
                for name in kernels if repeat % 2 == 0 else reversed(list(kernels)):
                    taken = step_time(kernels[name], inputs)
                    best[name] = min(best[name], taken) if repeat else best[name]
            results[rows] = (best["int8 dot"], best["int4"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,8,16", help="comma-separated rows per product")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if missing := q4_1_dot_missing():
        parser.exit(1, f"no int8 dot kernel here: {missing}\n")
    import torch

    results = call_on_cpu_thread(measure, [int(r) for r in args.rows.split(",")], args.repeats)
    print(f"SmolLM2-135M's {LAYERS * len(SHAPES)} Q4_1 products of a decoding step, {torch.get_num_threads()} threads")
    print("rows | int8 dot ms | torch int4 ms | int4 / int8 dot")
    for rows, (dot, int4) in results.items():
        print(f"{rows:>4} | {dot * 1000:>11.2f} | {int4 * 1000:>13.2f} | {int4 / dot:.2f}x")


if __name__ == "__main__":
    main()
