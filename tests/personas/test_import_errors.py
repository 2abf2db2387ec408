"""Hostile persona files end in one-line errors naming the file (and line), never a traceback."""

import csv
import json

import pytest

from aloekit.errors import AloeError
from aloekit.personas import PersonaFileError, PersonaPool, read_persona_file
from aloekit.store import Store

A = "She is a 30-year-old baker who loves jazz."
B = "He is a 45-year-old pilot who collects stamps."


@pytest.fixture
def pool(tmp_path):
    return PersonaPool(Store(tmp_path / "aloe.db"))


def _error(pool, path, **kwargs) -> str:
    with pytest.raises(AloeError) as caught:
        pool.import_file(path, "profile", **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["p.jsonl", "p.txt", "p.csv", "p.json"])
def test_utf16_bytes_name_file_and_line(tmp_path, pool, name):
    path = tmp_path / name
    path.write_bytes(b"\xff\xfe\x00bad")
    assert _error(pool, path) == f"{path}:1: the file starts with a UTF-16 byte-order mark; save it as UTF-8"


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("p.jsonl", b'"' + A.encode() + b'"\n"caf\xe9 owner"\n', "not UTF-8: byte 0xe9 at column 5"),
        ("p.txt", A.encode() + b"\ncaf\xe9 owner\n", "not UTF-8: byte 0xe9 at column 4"),
        ("p.csv", b"text\n" + A.encode() + b"\ncaf\xe9 owner\n", "column 'text' is not UTF-8: byte 0xe9 at column 4"),
    ],
)
def test_undecodable_line_is_a_bad_line(tmp_path, pool, name, body, reason):
    path = tmp_path / name
    path.write_bytes(body)
    line = 3 if name.endswith(".csv") else 2  # the CSV header is line 1
    assert _error(pool, path) == f"{path}:{line}: {reason}; nothing imported from {path} (use --skip-bad)"
    assert pool.count("profile") == 0
    report = pool.import_file(path, "profile", skip_bad=True)
    assert report.added == 1 and report.bad == [f"{path}:{line}: {reason}"]


def test_undecodable_json_array_names_the_line(tmp_path, pool):
    path = tmp_path / "p.json"
    path.write_bytes(b'[\n"' + A.encode() + b'",\n"caf\xe9"\n]')
    assert _error(pool, path) == f"{path}:3: not UTF-8: byte 0xe9 at column 5"


def test_lone_surrogate_escape_is_a_bad_line(tmp_path, pool):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(A) + '\n"bad \\ud800 text"\n', encoding="utf-8")
    report = pool.import_file(path, "profile", skip_bad=True)
    assert report.added == 1 and report.bad == [f"{path}:2: text is not valid Unicode (lone surrogate U+D800)"]


def test_nul_characters_are_refused_naming_a_utf16_file(tmp_path, pool):
    # A UTF-16 file without a byte-order mark decodes as UTF-8 into text full of NULs; "2 added" hid it.
    bomless = tmp_path / "p.txt"
    bomless.write_bytes("a persona\n".encode("utf-16-le"))
    assert _error(pool, bomless).startswith(f"{bomless}:1: text holds NUL characters (a UTF-16 file? save it as UTF-8)")
    escaped = tmp_path / "p.jsonl"
    escaped.write_text(json.dumps(A) + '\n{"text": "\\u0000"}\n', encoding="utf-8")
    report = pool.import_file(escaped, "profile", skip_bad=True)
    assert report.added == 1 and report.bad == [
        f"{escaped}:2: text holds NUL characters (a UTF-16 file? save it as UTF-8)"
    ]


def test_deeply_nested_json_line(tmp_path, pool):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(A) + "\n" + "[" * 100_000 + "\n", encoding="utf-8")
    assert _error(pool, path).startswith(f"{path}:2: invalid JSON: nested too deeply; nothing imported")
    assert pool.import_file(path, "profile", skip_bad=True).added == 1


def test_deeply_nested_json_array_item(tmp_path, pool):
    path = tmp_path / "p.json"
    path.write_text(f"[\n{json.dumps(A)},\n{'[' * 100_000}\n]", encoding="utf-8")
    assert _error(pool, path) == f"{path}:3: invalid JSON: item 1 is nested too deeply"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.jsonl", "", "{path}: the file is empty"),
        ("p.csv", "", "{path}: the file is empty"),
        ("p.json", "", "{path}: the file is empty"),
        ("p.txt", "\n  \n\n", "{path}: no personas in the file"),
        ("p.csv", "text\n", "{path}: no personas in the file"),
        ("p.json", "[]", "{path}: no personas in the file"),
        ("p.json", "  \n", "{path}: the file is blank (expected a JSON array of personas)"),
        ("p.json", '{"text": "x"}', "{path}:1: expected a JSON array of personas, found an object"),
        ("p.json", f'\n"{A}"', "{path}:2: expected a JSON array of personas, found a string"),
        ("p.json", f'["{A}"] []', "{path}:1: invalid JSON: extra data after the array"),
        ("p.json", f'["{A}"\n "{B}"]', "{path}:2: invalid JSON: expected ',' or ']' after item 0"),
        ("p.json", f'["{A}",\n', "{path}:2: invalid JSON: Expecting value (column 1)"),
        ("p.csv", "bio\nx\n", "{path}:1: CSV needs a 'text' column (found ['bio'])"),
        ("p.csv", f'text\n{A}\n"unterminated\n{B}\n', "{path}:3: malformed CSV: unexpected end of data"),
        ("p.csv", 'text\n"a"b\n', "{path}:2: malformed CSV: ',' expected after '\"'"),
        # A typo in the suffix was read as text, each JSON line a persona's text.
        (
            "p.jsnol",
            '{"text": "x"}\n',
            "{path}: unknown format '.jsnol' (use .jsonl, .json, .csv or .txt)",
        ),
    ],
)
def test_file_level_problems_are_one_line(tmp_path, pool, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert _error(pool, path) == message.format(path=path)


def test_missing_file_and_directory(tmp_path, pool):
    assert _error(pool, tmp_path / "missing.jsonl") == f"{tmp_path / 'missing.jsonl'}: file not found"
    (tmp_path / "folder.jsonl").mkdir()
    assert _error(pool, tmp_path / "folder.jsonl") == f"{tmp_path / 'folder.jsonl'}: is a directory, not a persona file"


def test_csv_field_of_one_megabyte_imports(tmp_path, pool):
    long_text = "She bakes bread, " * 62_000 + "and sings."  # about 1 MB, far over csv's default 128 KiB cap
    csv.field_size_limit(128 * 1024)  # the default, as in a fresh process: the import must lift it itself
    path = tmp_path / "p.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "kind"], [long_text, "profile"], [B, "profile"]])
    assert len(long_text) > 1_000_000
    report = pool.import_file(path)
    assert report.added == 2 and [len(p.text) for p in pool.list()] == [len(long_text.strip()), len(B)]


def test_json_items_name_their_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(f'[\n"{A}",\n42\n]', encoding="utf-8")
    assert read_persona_file(path, "profile").bad == [f"{path}:3: item 1: expected a JSON string or object, got int"]


def test_cli_reports_undecodable_bytes_in_one_line(run_aloe, tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'"' + A.encode() + b'"\n"caf\xe9"\n')
    proc = run_aloe("personas", "import", "p.jsonl", "--kind", "profile")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: p.jsonl:2: not UTF-8: byte 0xe9 at column 5; nothing imported from p.jsonl (use --skip-bad)"
    )


def test_persona_file_error_is_an_aloe_error():
    assert issubclass(PersonaFileError, AloeError)
