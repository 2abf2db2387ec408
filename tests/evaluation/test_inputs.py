"""Bad evaluation input (eval sets, report folders, run ids, label files) fails in one line naming it."""

import json

import pytest

from aloekit.errors import AloeError, ConfigError
from aloekit.evaluation import EvalSetError, check_eval_set, load_eval_personas, run_results, write_report
from aloekit.evaluation.audit import read_labels
from aloekit.evaluation.report import eval_config
from aloekit.evaluation.task import eval_persona_ids
from aloekit.store import Store

PERSONALITIES = "".join(json.dumps(f"personality {i}") + "\n" for i in range(5)).encode()
PROFILES = b'"profile one"\n"profile two"\n'


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "\r" not in message
    return message


def eval_folder(root, profiles=PROFILES, personalities=PERSONALITIES):
    folder = root / "set"
    folder.mkdir()
    for name, data in (("profile_eval.jsonl", profiles), ("personality_eval.jsonl", personalities)):
        if data is not None:
            (folder / name).write_bytes(data)
    return folder


def test_a_good_eval_set_is_checked_without_writing(tmp_path):
    folder = eval_folder(tmp_path)
    assert check_eval_set(folder) == 10 and check_eval_set("builtin") == 40
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["personality_eval.jsonl", "profile_eval.jsonl", "set"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: root / "nope", r"^eval set .*nope: folder not found \(give builtin or a folder holding"),
        (lambda root: (root / "f.txt", (root / "f.txt").write_text("x"))[0], r"^eval set .*f.txt: not a folder"),
        (lambda root: eval_folder(root, profiles=None), r"^eval set .*set: missing profile_eval.jsonl$"),
        (lambda root: eval_folder(root, personalities=None), r"^eval set .*set: missing personality_eval.jsonl$"),
    ],
    ids=["missing", "file", "no-profiles-file", "no-personalities-file"],
)
def test_eval_set_folder_problems(tmp_path, build, message):
    source = build(tmp_path)
    with pytest.raises(EvalSetError, match=message) as excinfo:
        check_eval_set(source)
    one_line(excinfo)


def test_a_folder_where_an_eval_file_should_be(tmp_path):
    folder = eval_folder(tmp_path, personalities=None)
    (folder / "personality_eval.jsonl").mkdir()
    with pytest.raises(EvalSetError, match="personality_eval.jsonl is not a file"):
        check_eval_set(folder)


@pytest.mark.parametrize(
    ("profiles", "personalities", "file", "message"),
    [
        (PROFILES + b'"\xff"\n', PERSONALITIES, "profile_eval.jsonl", r":?3:? .*(not UTF-8)"),
        (PROFILES + b"{bad\n", PERSONALITIES, "profile_eval.jsonl", r":?3:? .*invalid JSON"),
        (PROFILES + b"[" * 100_000 + b"\n", PERSONALITIES, "profile_eval.jsonl", "nested too deeply"),
        (PROFILES, PERSONALITIES + b"42\n", "personality_eval.jsonl", r":?6:? .*expected a JSON string or object"),
        (b"", PERSONALITIES, "profile_eval.jsonl", "empty|no profiles"),
        (PROFILES, b'"only one"\n', "personality_eval.jsonl", "has 1, the benchmark needs at least 5 personalities"),
        # Scores are keyed by persona: a repeated one's second conversation would overwrite the first's.
        (PROFILES + b'"profile  one "\n', PERSONALITIES, "profile_eval.jsonl", r":3: the same profile as on line 1"),
    ],
    ids=["bytes", "bad-json", "deep", "wrong-shape", "empty", "too-few", "repeated"],
)
def test_bad_eval_files_name_file_and_line(tmp_path, profiles, personalities, file, message):
    folder = eval_folder(tmp_path, profiles, personalities)
    for read in (check_eval_set, load_eval_personas, eval_persona_ids):
        if read is eval_persona_ids and "needs at least" in message:
            continue  # the held-out ids take every personality there is
        with pytest.raises(AloeError, match=message) as excinfo:
            read(folder)
        assert str(folder / file) in one_line(excinfo)


# Reports and stored runs --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "aloe.db")


def test_unknown_or_wrong_kind_of_run(store):
    simulation = store.start_run("aloe --db x.db simulate", {"simulation_resolved": {}, "seed": 0}, 0)
    chat = store.start_run("aloe chat local:smollm2 hi", {"seed": 0}, 0)
    for read in (eval_config, run_results):
        with pytest.raises(AloeError, match=r"^no run 'nope' in .*aloe.db$") as excinfo:
            read(store, "nope")
        one_line(excinfo)
        with pytest.raises(AloeError, match=rf"^run {simulation} is not an evaluation run \(it is a simulation run\)$"):
            read(store, simulation)  # once "(it was started by aloe --db)": the command line's first two words
        with pytest.raises(AloeError, match=rf"^run {chat} is not an evaluation run \(it is another command's run\)$"):
            read(store, chat)


def test_a_stored_eval_config_that_no_longer_validates(store):
    run = store.start_run("aloe eval", {"eval_resolved": {"model": "x", "turns": 0}}, 0)
    with pytest.raises(ConfigError, match=f"^run {run}: stored eval config, field turns: ") as excinfo:
        eval_config(store, run)
    one_line(excinfo)


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_report_out_that_cannot_be_a_folder(tmp_path, store, under):
    afile = tmp_path / "report.txt"
    afile.write_text("x")
    out = afile / "sub" if under else afile
    run = store.start_run("aloe simulate", {}, 0)  # checked first: a bad --out fails before any run is read
    with pytest.raises(ConfigError, match=r"^--out .*report.txt(/sub: .*report.txt|:) is a file, not a folder$"):
        write_report(store, [run], out)
    assert afile.read_text() == "x"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\n", r"^labels file .*l.jsonl: line 1: not UTF-8 text"),
        (b"[" * 100_000, r"l.jsonl:1: invalid JSON: nested too deeply$"),
        (b"{bad\n", r"l.jsonl:1: invalid JSON"),
        (b"", r"^labels file .*l.jsonl: no rows$"),
    ],
)
def test_bad_labels_file(tmp_path, content, message):
    path = tmp_path / "l.jsonl"
    path.write_bytes(content)
    with pytest.raises(AloeError, match=message) as excinfo:
        read_labels(path)
    one_line(excinfo)


def test_labels_path_that_is_a_folder(tmp_path):
    with pytest.raises(AloeError, match=r"^labels file .*: is a folder, not a file$"):
        read_labels(tmp_path)
