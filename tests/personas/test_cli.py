import json

import pytest

from aloekit.testing import StubOpenAIServer


def test_import_list_stats_export(run_aloe, tmp_path):
    (tmp_path / "p.jsonl").write_text(
        '"She is a 30-year-old baker who loves jazz."\n"He is a pilot who collects stamps."\n'
    )
    proc = run_aloe("personas", "import", "p.jsonl", "--kind", "profile")
    assert proc.returncode == 0 and "2 added, 0 duplicates skipped" in proc.stdout
    assert "0 added, 2 duplicates skipped" in run_aloe("personas", "import", "p.jsonl", "--kind", "profile").stdout
    listed = json.loads(run_aloe("--json", "personas", "list", "--kind", "profile").stdout)
    assert [p["text"][:6] for p in listed] == ["She is", "He is "]
    stats = json.loads(run_aloe("--json", "personas", "stats", "--no-similarity").stdout)
    assert stats == {"profile": {"count": 2}, "personality": {"count": 0}}
    assert run_aloe("personas", "export", "--kind", "profile", "--out", "out.jsonl").returncode == 0
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "p.jsonl").read_text()


def test_bad_file_is_one_line_and_writes_nothing(run_aloe, tmp_path):
    (tmp_path / "p.jsonl").write_text('"ok text here"\n{broken\n')
    proc = run_aloe("personas", "import", "p.jsonl", "--kind", "profile")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: p.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes (column 2); "
        "nothing imported from p.jsonl (use --skip-bad)"
    )
    assert json.loads(run_aloe("--json", "personas", "stats", "--no-similarity").stdout)["profile"]["count"] == 0
    skipped = run_aloe("personas", "import", "p.jsonl", "--kind", "profile", "--skip-bad")
    assert "1 added" in skipped.stdout and "p.jsonl:2" in skipped.stderr


def test_generate_with_a_server_backend(run_aloe):
    lines = "\n".join(f"{i}. " + " ".join(f"z{i}q{j}" for j in range(10)) for i in range(1, 6))
    with StubOpenAIServer(respond=lambda messages: lines) as server:
        proc = run_aloe(
            "--json",
            "personas",
            "generate",
            "--kind",
            "profile",
            "--target",
            "22",
            "--backend",
            server.spec(),
            "--candidates",
            "5",
            "--threshold",
            "0.95",
        )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["start_size"] == 20 and summary["final_size"] == 22 and summary["stop_reason"] == "target reached"


@pytest.mark.parametrize(("content", "message"), [(b"", "the file is empty"), (b'"a"\n{bad\n', ":2: invalid JSON"),
                                                  (b"\xb9\x00\x01", ":1: not UTF-8")])  # fmt: skip
def test_a_bad_seed_file_is_refused_before_any_run(run_aloe, tmp_path, content, message):
    # It was read only once the run row existed and the embedder had loaded: each try left a failed run.
    (tmp_path / "seeds.jsonl").write_bytes(content)
    proc = run_aloe("personas", "generate", "--kind", "profile", "--target", "5", "--seeds", "seeds.jsonl",
                    "--backend", "replay:none.json")  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.startswith("error: seeds.jsonl") and message in proc.stderr
    assert json.loads(run_aloe("--json", "runs", "list").stdout) == []


def test_several_files_are_all_checked_before_any_is_imported(run_aloe, tmp_path):
    (tmp_path / "a.txt").write_text("She is a 30-year-old baker who loves jazz.\n")
    (tmp_path / "b.txt").write_text("He is a 45-year-old pilot who collects stamps.\n")
    (tmp_path / "empty.txt").write_text("")
    for last, message in (("missing.txt", "missing.txt: file not found"), ("empty.txt", "empty.txt: the file is empty"),
                          ("p.jsnol", "p.jsnol: unknown format '.jsnol'")):  # fmt: skip
        proc = run_aloe("personas", "import", "a.txt", "b.txt", last, "--kind", "profile")
        assert proc.returncode == 1 and proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert json.loads(run_aloe("--json", "personas", "list").stdout) == []
