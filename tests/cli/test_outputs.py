"""Output files are written whole or not at all, never through a link, never into a pipe."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aloekit.errors import AloeError
from aloekit.outputs import write_text, write_whole


def test_a_failed_write_leaves_no_partial_file_and_the_old_one_as_it_was(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text("the previous export\n")

    def full_disk(target):
        target.write_text("half a ro")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(AloeError, match=r"^--out .*rows.jsonl: cannot write: No space left on device$"):
        write_whole(out, "--out", full_disk)
    assert out.read_text() == "the previous export\n" and os.listdir(tmp_path) == ["rows.jsonl"]
    with pytest.raises(AloeError, match="cannot write"):
        write_whole(tmp_path / "new.jsonl", "--out", full_disk)
    assert os.listdir(tmp_path) == ["rows.jsonl"]


def test_a_link_is_replaced_not_written_through(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not aloekit's\n")
    (tmp_path / "out.jsonl").symlink_to(elsewhere)
    write_text(tmp_path / "out.jsonl", "rows\n", "--out")
    assert elsewhere.read_text() == "not aloekit's\n" and (tmp_path / "out.jsonl").read_text() == "rows\n"


def test_pipes_are_refused_and_devices_written_directly(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(AloeError, match=r"pipe.jsonl: is a pipe, expected a file path$"):
        write_text(tmp_path / "pipe.jsonl", "rows\n", "--out")
    write_text(Path(os.devnull), "rows\n", "--out")
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)
    # /dev/stdout is a pipe here (captured): written in place, not refused, not replaced.
    script = "from pathlib import Path\nfrom aloekit.outputs import write_text\n"
    script += "write_text(Path('/dev/stdout'), 'rows', 'o')"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "rows", proc.stderr


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    out = tmp_path / "private.jsonl"
    out.write_text("old\n")
    out.chmod(0o600)
    write_text(out, "new\n", "--out")
    assert out.read_text() == "new\n" and out.stat().st_mode & 0o777 == 0o600


def _simulate_two_conversations(run_aloe, tmp_path):
    """Two conversations of two turns from replay files, every role answered without a model."""
    roles = []
    for role in ("user", "inducer", "judge", "preferred", "plain"):
        answers = ["Message 1"] * 20 if role == "judge" else [f"{role} says {i}" for i in range(20)]
        (tmp_path / f"{role}.json").write_text(json.dumps(answers))
        roles += ["--role", f"{role}=replay:{role}.json"]
    assert run_aloe("simulate", "--conversations", "2", "--turns", "2", *roles).returncode == 0


def test_export_checks_the_validation_file_before_writing_either(run_aloe, tmp_path):
    _simulate_two_conversations(run_aloe, tmp_path)
    (tmp_path / "sft.val.jsonl").mkdir()
    proc = run_aloe("export", "sft", "--out", "sft.jsonl", "--val-fraction", "0.5")
    assert proc.returncode == 1 and "sft.val.jsonl: is a folder" in proc.stderr
    assert not (tmp_path / "sft.jsonl").exists()


def test_an_export_without_a_split_removes_an_earlier_ones_validation_file(run_aloe, tmp_path):
    _simulate_two_conversations(run_aloe, tmp_path)
    assert run_aloe("export", "sft", "--out", "sft.jsonl", "--val-fraction", "0.5").returncode == 0
    assert (tmp_path / "sft.val.jsonl").is_file()
    # Left there, `aloe train` would read it as the new file's validation split.
    proc = run_aloe("--json", "export", "sft", "--out", "sft.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed_validation"] == "sft.val.jsonl"
    assert not (tmp_path / "sft.val.jsonl").exists() and (tmp_path / "sft.jsonl").is_file()
    # A split has no place beside a stream, and one that holds out every row leaves nothing to train on.
    proc = run_aloe("export", "sft", "--out", "/dev/stdout", "--val-fraction", "0.5")
    assert proc.returncode == 1 and proc.stderr.startswith("error: --val-fraction needs --out to be a file")
    proc = run_aloe("export", "sft", "--out", "all.jsonl", "--val-fraction", "0.99")
    assert proc.returncode == 1 and "held out all" in proc.stderr and not (tmp_path / "all.jsonl").exists()


def test_files_written_together_are_put_in_place_together(tmp_path):
    from aloekit.errors import AloeError
    from aloekit.outputs import write_files

    train, val, stale = tmp_path / "a.jsonl", tmp_path / "a.val.jsonl", tmp_path / "old.jsonl"
    for path in (train, val, stale):
        path.write_text("old\n")

    def full_disk(target):
        raise OSError(28, "No space left on device")

    with pytest.raises(AloeError, match=r"^--val \S+/a.val.jsonl: cannot write: No space left on device$"):
        write_files([(train, "--out", lambda t: t.write_text("new\n")), (val, "--val", full_disk)], stale=[stale])
    # The first file was written, but not put in place: the old set stands whole, and nothing partial is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.val.jsonl", "old.jsonl"]
    assert train.read_text() == val.read_text() == "old\n"
    write_files([(train, "--out", lambda t: t.write_text("new\n")), (val, "--val", lambda t: t.write_text("v\n"))],
                stale=[stale])  # fmt: skip
    assert (train.read_text(), val.read_text(), stale.exists()) == ("new\n", "v\n", False)


def test_a_report_folder_whose_files_cannot_be_written_is_refused_before_any_is(tmp_path):
    from aloekit.errors import ConfigError
    from aloekit.evaluation.report import check_report_folder

    (tmp_path / "rep" / "report.md").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"rep: report.md there is not a file$"):
        check_report_folder(tmp_path / "rep")
    assert os.listdir(tmp_path / "rep") == ["report.md"]
