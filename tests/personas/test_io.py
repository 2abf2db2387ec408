import json

import pytest

from aloekit.personas import PersonaFileError, PersonaPool, read_persona_file, write_persona_file
from aloekit.store import Store

A = "She is a 30-year-old baker who loves jazz."
B = "He is a 45-year-old pilot who collects stamps."


@pytest.fixture
def pool(tmp_path):
    return PersonaPool(Store(tmp_path / "aloe.db"))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("p.jsonl", f"{json.dumps(A)}\n\n{json.dumps(B)}\n"),
        ("p.jsonl", f"{json.dumps({'text': A})}\n{json.dumps({'text': B, 'kind': 'profile'})}\n"),
        ("p.json", json.dumps([A, {"text": B}])),
        ("p.csv", f'text\n"{A}"\n"{B}"\n'),
        ("p.txt", f"{A}\n\n{B}\n"),
    ],
)
def test_each_format_imports(tmp_path, pool, name, content):
    report = pool.import_file(_write(tmp_path, name, content), "profile")
    assert (report.added, report.duplicates) == (2, 0)
    assert [p.text for p in pool.list("profile")] == [A, B]


def test_duplicates_are_skipped_and_counted(tmp_path, pool):
    path = _write(tmp_path, "p.txt", f"{A}\n{A}\n{B}\n")
    assert (pool.import_file(path, "profile").added, pool.import_file(path, "profile").duplicates) == (2, 3)
    assert pool.count("profile") == 2


def test_pair_objects_import_both_kinds(tmp_path, pool):
    line = json.dumps({"profile": A, "personality": "She is calm and precise in all she does."})
    report = pool.import_file(_write(tmp_path, "pairs.jsonl", line + "\n"))
    assert report.pairs == 1 and pool.count("profile") == 1 and pool.count("personality") == 1
    assert pool.store.db["persona_pairs"].count == 1


def test_malformed_line_names_file_and_line_and_writes_nothing(tmp_path, pool):
    path = _write(tmp_path, "p.jsonl", f'{json.dumps(A)}\n{json.dumps(B)}\n"unterminated\n')
    with pytest.raises(PersonaFileError, match=r"p.jsonl:3: invalid JSON.*nothing imported"):
        pool.import_file(path, "profile")
    assert pool.count("profile") == 0


def test_skip_bad_imports_the_rest_and_lists_bad_lines(tmp_path, pool):
    path = _write(tmp_path, "p.jsonl", f'{json.dumps(A)}\n{{"txt": 1}}\n42\n{json.dumps(B)}\n')
    report = pool.import_file(path, "profile", skip_bad=True)
    assert report.added == 2
    assert [b.split(": ", 1)[0] for b in report.bad] == [f"{path}:2", f"{path}:3"]
    assert "needs a 'text' field" in report.bad[0] and "got int" in report.bad[1]


def test_concatenated_values_are_recovered_with_a_warning(tmp_path):
    parsed = read_persona_file(_write(tmp_path, "p.jsonl", f"{json.dumps(A)}{json.dumps(B)}\n"), "profile")
    assert [p.text for p in parsed.personas] == [A, B]
    assert parsed.warnings == [f"{tmp_path / 'p.jsonl'}:1: 2 JSON values on one line; imported each"]


def test_plain_text_needs_a_kind(tmp_path, pool):
    with pytest.raises(PersonaFileError, match=r"p.txt:1: a plain text entry needs --kind"):
        pool.import_file(_write(tmp_path, "p.txt", A))


def test_csv_without_text_column(tmp_path):
    with pytest.raises(PersonaFileError, match=r"p.csv:1: CSV needs a 'text' column"):
        read_persona_file(_write(tmp_path, "p.csv", "bio\nx\n"), "profile")


@pytest.mark.parametrize("name", ["out.jsonl", "out.json", "out.csv", "out.txt"])
def test_export_round_trips(tmp_path, pool, name):
    pool.import_file(_write(tmp_path, "p.txt", f"{A}\n{B}\n"), "profile")
    out = tmp_path / name
    assert write_persona_file(pool.list("profile"), out) == 2
    assert [p.text for p in read_persona_file(out, "profile").personas] == [A, B]
