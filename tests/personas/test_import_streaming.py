"""Streaming import: flat memory, batched writes deduplicated by the database, atomic failure, capped reports."""

import inspect
import json
import tracemalloc

import pytest

from aloekit.personas import PersonaFileError, PersonaPool, iter_persona_file
from aloekit.personas import embedding as embedding_module
from aloekit.personas.pool import MAX_KEPT_MESSAGES
from aloekit.store import Store

A = "She is a 30-year-old baker who loves jazz."
B = "He is a 45-year-old pilot who collects stamps."
C = "They are a 52-year-old nurse who sings in a choir."


@pytest.fixture
def pool(tmp_path):
    return PersonaPool(Store(tmp_path / "aloe.db"))


def _jsonl(tmp_path, name, texts):
    path = tmp_path / name
    path.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    return path


def test_reader_is_a_generator(tmp_path):
    items = iter_persona_file(_jsonl(tmp_path, "p.jsonl", [A, B]), "profile")
    assert inspect.isgenerator(items)
    assert next(items).personas[0].text == A  # the first entry comes before the rest is read


def _peak_import_bytes(pool, path):
    tracemalloc.start()
    try:
        pool.import_file(path, "profile", batch_size=100)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_import_memory_does_not_grow_with_the_file(tmp_path):
    small = _jsonl(tmp_path, "small.jsonl", [f"Person {i} is a baker who loves jazz and walks." for i in range(1_000)])
    large = _jsonl(tmp_path, "large.jsonl", [f"Person {i} is a baker who loves jazz and walks." for i in range(10_000)])
    small_peak = _peak_import_bytes(PersonaPool(Store(tmp_path / "small.db")), small)
    large_peak = _peak_import_bytes(PersonaPool(Store(tmp_path / "large.db")), large)
    # Holding the whole file would make the 10x file take ~10x the memory; streaming keeps it flat.
    assert large_peak < 2 * small_peak, (small_peak, large_peak)


def test_duplicates_are_found_by_the_database_across_batches(tmp_path, pool):
    pool.import_file(_jsonl(tmp_path, "first.jsonl", [C]), "profile")
    report = pool.import_file(_jsonl(tmp_path, "p.jsonl", [A, B, A, C, B, A]), "profile", batch_size=2)
    assert (report.added, report.duplicates) == (2, 4)
    assert [p.text for p in pool.list("profile")] == [C, A, B]


def test_pairs_are_deduplicated_by_the_database(tmp_path, pool):
    line = {"profile": A, "personality": "She is calm and precise in all she does."}
    path = _jsonl(tmp_path, "pairs.jsonl", [line, line])
    report = pool.import_file(path, batch_size=1)
    assert (report.added, report.duplicates, report.pairs) == (2, 2, 2)
    assert pool.store.db["persona_pairs"].count == 1


def test_a_bad_line_after_written_batches_leaves_the_pool_unchanged(tmp_path, pool):
    pool.import_file(_jsonl(tmp_path, "first.jsonl", [C]), "profile")
    path = tmp_path / "p.jsonl"
    good = "".join(json.dumps(f"Person {i} is a baker who loves jazz.") + "\n" for i in range(10))
    path.write_text(good + "{broken\n42\n", encoding="utf-8")
    with pytest.raises(PersonaFileError) as caught:
        pool.import_file(path, "profile", batch_size=2)  # five batches are written before line 11
    assert str(caught.value) == (
        f"{path}:11: invalid JSON: Expecting property name enclosed in double quotes (column 2) "
        f"(and 1 more bad lines); nothing imported from {path} (use --skip-bad)"
    )
    assert [p.text for p in pool.list()] == [C]


def test_skip_bad_keeps_the_first_messages_and_counts_all(tmp_path, pool):
    path = tmp_path / "p.jsonl"
    bad, warned = MAX_KEPT_MESSAGES + 150, MAX_KEPT_MESSAGES + 5
    lines = ["{broken"] * bad + [json.dumps(f"Person {i} bakes.") * 2 for i in range(warned)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = pool.import_file(path, "profile", skip_bad=True)
    assert report.added == warned and report.duplicates == warned  # each line holds its text twice
    assert (len(report.bad), report.bad_count) == (MAX_KEPT_MESSAGES, bad)
    assert (len(report.warnings), report.warning_count) == (MAX_KEPT_MESSAGES, warned)
    assert report.bad[0].startswith(f"{path}:1: invalid JSON")


def test_import_never_builds_an_embedder(tmp_path, pool, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("import must not embed")

    monkeypatch.setattr(embedding_module, "get_embedder", refuse)
    monkeypatch.setattr(embedding_module.SentenceTransformerEmbedder, "__init__", refuse)
    monkeypatch.setattr(embedding_module.OpenAIEmbedder, "__init__", refuse)
    assert pool.import_file(_jsonl(tmp_path, "p.jsonl", [A, B]), "profile").added == 2
    assert pool.store.conn.execute("SELECT COUNT(*) FROM personas WHERE embedding IS NOT NULL").fetchone()[0] == 0
