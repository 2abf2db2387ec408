"""Seeds for random draws, derived from the run's seed and where the draw happens, never from time or ids."""

from __future__ import annotations

import hashlib


def draw_seed(seed: int, index: int, step: int, purpose: str) -> int:
    """A 31-bit seed for one random draw, from (run seed, conversation index, turn or round, purpose) only."""
    key = f"{seed}:{index}:{step}:{purpose}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") >> 1
