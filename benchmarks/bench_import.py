"""Peak memory of ``PersonaPool.import_file`` on JSONL files of 10k, 100k and 300k personas.

Each file is imported into a fresh database by a fresh Python process, which reports its own peak RSS
(``ru_maxrss``) and the RSS it had before the import began (interpreter plus aloekit imports). The
import streams, so peak RSS should not grow with the file: the target is peak(300k) / peak(10k) <= 1.2.
The child also checks that no embedder (torch, sentence-transformers, openai) was loaded.

Run: ``.venv/bin/python benchmarks/bench_import.py`` (target: ratio <= 1.2, "flat within 20%").
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMBEDDER_MODULES = ("torch", "sentence_transformers", "openai")
JOBS = "nurse plumber violinist lawyer beekeeper captain baker zookeeper surgeon florist astronomer tailor".split()
HOBBIES = "diving rockets baking birdwatching salsa clocks caving haiku chess kites foraging radio quilting".split()


def write_personas(path: Path, n: int) -> None:
    """``n`` distinct profile-like texts (~200 characters each), one JSON string a line."""
    rng = random.Random(n)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            text = (
                f"Person {i} is a {rng.randint(18, 85)}-year-old {rng.choice(JOBS)} who lives with "
                f"{rng.randint(0, 6)} cats, enjoys {rng.choice(HOBBIES)} and {rng.choice(HOBBIES)}, and is "
                f"saving up for a trip to see the {rng.choice(['fjords', 'desert', 'rainforest', 'steppe'])}."
            )
            handle.write(json.dumps(text) + "\n")


def child(path: str, db: str) -> None:
    """Import ``path`` into a new database and print a JSON line with the report and memory numbers."""
    from aloekit.personas import PersonaPool
    from aloekit.store import Store

    pool = PersonaPool(Store(db))
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    report = pool.import_file(path, "profile")
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded = [name for name in EMBEDDER_MODULES if name in sys.modules]
    print(json.dumps({"added": report.added, "duplicates": report.duplicates, "seconds": elapsed,
                      "before_kib": before_kib, "peak_kib": peak_kib, "embedder_modules": loaded}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--child", nargs=2, metavar=("FILE", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path, db = Path(tmp) / f"p{n}.jsonl", Path(tmp) / f"p{n}.db"
            write_personas(path, n)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(db)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                sys.exit(f"import of {n} lines failed:\n{proc.stderr}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            assert result["added"] == n, result
            if result["embedder_modules"]:
                sys.exit(f"import loaded embedder modules: {result['embedder_modules']}")
            results[n] = result | {"file_mib": path.stat().st_size / 2**20}
            path.unlink()
            db.unlink()

    print(f"{'lines':>8} {'file MiB':>9} {'RSS before MiB':>15} {'peak RSS MiB':>13} {'import MiB':>11} {'seconds':>8}")
    for n, r in results.items():
        before, peak = r["before_kib"] / 1024, r["peak_kib"] / 1024
        print(f"{n:>8} {r['file_mib']:>9.1f} {before:>15.1f} {peak:>13.1f} {peak - before:>11.1f} {r['seconds']:>8.1f}")
    print("no embedder loaded during import (torch, sentence_transformers, openai absent from sys.modules)")
    smallest, largest = min(results), max(results)
    ratio = results[largest]["peak_kib"] / results[smallest]["peak_kib"]
    verdict = "ok" if ratio <= 1.2 else "FAIL"
    print(f"ratio: peak({largest}) / peak({smallest}) = {ratio:.2f} (target <= 1.2, flat within 20%): {verdict}")


if __name__ == "__main__":
    main()
