"""Time of SmolLM2-135M's packed products for one decoding step (30 layers: q/k/v joined, o, gate/up joined, down:
120 Q4_1 products; then the Q8_0 output layer, 49152 x 576) through the compiled int8 dot kernel and through
torch's kernels (int4; for the output layer the AMX tiles on a CPU with them, else int8), for 1, 8 and 16
rows: the weights random codes of those shapes, cycled so that they come from memory as in a step. Each figure
is the best of ``--repeats`` passes, the two taking turns; the ratio is torch's time over the int8 dot one's.

Run: ``.venv/bin/python benchmarks/bench_int8_dot.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from aloekit.agents.backends.int8_dot import Int8DotMatmul, int8_dot_missing
from aloekit.agents.backends.local import cpu_has_bfloat16_tiles
from aloekit.agents.backends.packed import Q8Matmul, _q4_matmul, bfloat16_tiles_matmul, per_row_int8
from aloekit.cpu_thread import call_on_cpu_thread

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # outputs x inputs: q/k/v, o, gate/up, down
OUTPUT_LAYER = (49152, 576)


def step_time(matmuls: list[tuple[Any, int]], inputs: dict[int, Any]) -> float:
    """Seconds for one pass over ``matmuls`` (each with its number of inputs), in order."""
    started = time.perf_counter()
    for matmul, features in matmuls:
        matmul(inputs[features])
    return time.perf_counter() - started


def measure(rows_list: list[int], repeats: int) -> dict[int, tuple[float, float]]:
    """For each row count, the best time of a step's products through the int8 dot kernel and through torch's
    kernels, in seconds."""
    import torch

    rng = np.random.default_rng(0)
    kernels: dict[str, list[tuple[Any, int]]] = {"int8 dot": [], "torch": []}
    for _ in range(LAYERS):
        for outputs, features in SHAPES:
            codes = rng.integers(0, 16, (outputs, features)).astype(np.uint8)
            scales = rng.uniform(0.001, 0.01, (outputs, features // 32)).astype(np.float16).astype(np.float32)
            minimums = (-8 * scales).astype(np.float16).astype(np.float32)
            kernels["int8 dot"].append((Int8DotMatmul.q4_1(codes, scales, minimums), features))
            kernels["torch"].append((_q4_matmul(codes, scales, minimums), features))
    outputs, features = OUTPUT_LAYER
    codes = rng.integers(-127, 128, OUTPUT_LAYER).astype(np.int8)
    scales = rng.uniform(0.001, 0.01, (outputs, features // 32)).astype(np.float16).astype(np.float32)
    weight = (codes.reshape(outputs, -1, 32) * scales[..., None]).reshape(OUTPUT_LAYER)
    tiles = bfloat16_tiles_matmul(torch.from_numpy(weight)) if cpu_has_bfloat16_tiles() else None
    torch_head = tiles or Q8Matmul.from_codes(*per_row_int8(weight))
    kernels["int8 dot"].append((Int8DotMatmul.q8_0(codes, scales), features))
    kernels["torch"].append((torch_head, features))
    results = {}
    with torch.inference_mode():
        for rows in rows_list:
            inputs = {k: torch.randn(rows, k).bfloat16() for k in {k for _, k in SHAPES}}
            best = {name: float("inf") for name in kernels}
            for repeat in range(repeats + 1):  # the first pass warms up
                for name in kernels if repeat % 2 == 0 else reversed(list(kernels)):
                    taken = step_time(kernels[name], inputs)
                    best[name] = min(best[name], taken) if repeat else best[name]
            results[rows] = (best["int8 dot"], best["torch"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,8,16", help="comma-separated rows per product")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if missing := int8_dot_missing():
        parser.exit(1, f"no int8 dot kernel here: {missing}\n")
    import torch

    results = call_on_cpu_thread(measure, [int(r) for r in args.rows.split(",")], args.repeats)
    head = "AMX tiles" if cpu_has_bfloat16_tiles() else "int8"
    print(f"SmolLM2-135M's packed products of a decoding step ({LAYERS * len(SHAPES)} Q4_1, the Q8_0 output layer), "
          f"{torch.get_num_threads()} threads; torch: int4 and {head}")  # fmt: skip
    print("rows | int8 dot ms | torch ms | torch / int8 dot")
    for rows, (dot, others) in results.items():
        print(f"{rows:>4} | {dot * 1000:>11.2f} | {others * 1000:>8.2f} | {others / dot:.2f}x")


if __name__ == "__main__":
    main()
