import json
from collections import Counter

import pytest

from aloekit.errors import AloeError
from aloekit.personas import Persona, PersonaPool, eval_set, sample_pairs
from aloekit.store import Store
from tests.conftest import SHARED_DATA

PROFILES = [Persona.new("profile", f"Profile number {i} is a person with facts.") for i in range(30)]
PERSONALITIES = [Persona.new("personality", f"Personality number {i} has traits.") for i in range(12)]


def test_sample_pairs_is_deterministic_for_a_seed():
    first = [p.id for p in sample_pairs(PROFILES, PERSONALITIES, 200, seed=7)]
    assert first == [p.id for p in sample_pairs(PROFILES, PERSONALITIES, 200, seed=7)]
    assert first != [p.id for p in sample_pairs(PROFILES, PERSONALITIES, 200, seed=8)]


def test_sample_pairs_follows_the_paper_scheme():
    pairs = sample_pairs(PROFILES, PERSONALITIES, 300, seed=0)  # 10 passes over 30 profiles
    assert len({p.id for p in pairs}) == 300  # no duplicate pairs
    assert set(Counter(p.profile.id for p in pairs).values()) == {10}  # each profile once per pass
    assert [p.profile.id for p in pairs[:30]] == [p.id for p in PROFILES]


def test_sample_pairs_exhausts_all_combinations_then_refuses():
    assert len({p.id for p in sample_pairs(PROFILES, PERSONALITIES, 360)}) == 360
    with pytest.raises(AloeError, match="cannot draw 361 distinct pairs"):
        sample_pairs(PROFILES, PERSONALITIES, 361)


def test_pool_samples_from_the_store(tmp_path):
    pool = PersonaPool(Store(tmp_path / "aloe.db"))
    assert (pool.ensure_seeds("profile"), pool.ensure_seeds("personality")) == (20, 20)  # shipped seeds
    assert pool.ensure_seeds("profile") == 0  # only into an empty pool
    pairs = pool.sample_pairs(50, seed=1)
    assert len({p.id for p in pairs}) == 50 and pairs == pool.sample_pairs(50, seed=1)


def test_eval_set_on_small_files(tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(f"Profile {i} fact text.") + "\n" for i in range(3)))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(f"Personality {i} trait text.") + "\n" for i in range(7)))
    pairs = eval_set(tmp_path / "p.jsonl", tmp_path / "q.jsonl", n_personalities=5)
    assert len(pairs) == 15 and pairs[1].personality.text == "Personality 1 trait text."
    with pytest.raises(AloeError, match="needs at least 8 personalities"):
        eval_set(tmp_path / "p.jsonl", tmp_path / "q.jsonl", n_personalities=8)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the paper's eval files are not at {SHARED_DATA}")
def test_paper_eval_set_has_exactly_100_distinct_pairs():
    pairs = eval_set(SHARED_DATA / "profile_eval.jsonl", SHARED_DATA / "personality_eval.jsonl")
    assert len(pairs) == 100 and len({p.id for p in pairs}) == 100
    assert len({p.profile.id for p in pairs}) == 20 and len({p.personality.id for p in pairs}) == 5
    assert pairs[0].profile.text.startswith("He is a 33-year-old mechanical engineer")
    again = eval_set(SHARED_DATA / "profile_eval.jsonl", SHARED_DATA / "personality_eval.jsonl")
    assert [p.id for p in pairs] == [p.id for p in again]  # stable order
