"""One run, one set of intervals: the viewer, `aloe report` and `aloe compare` print the same numbers."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from aloekit.cli import cli
from aloekit.evaluation.metrics import N_BOOT
from aloekit.evaluation.report import format_interval, run_results, write_report
from aloekit.store import Store
from aloekit.viewer.render import eval_data, eval_page
from tests.viewer.evalruns import eval_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two evaluation runs over the same personas, the second judged a little higher."""
    db = tmp_path_factory.mktemp("eval-views") / "aloe.db"
    store = Store(db)
    a = eval_run(store, "views-a", personas=8, turns=3, seed=7)
    b = eval_run(store, "views-b", personas=8, turns=3, seed=7, bias=1)
    return {"db": db, "store": store, "a": a, "b": b}


def _same(x: object, y: object) -> bool:
    """Equal, NaN included (an interval that cannot be computed is NaN in every view)."""
    return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)


def test_viewer_and_report_give_identical_intervals(runs, tmp_path):
    viewed = eval_data(runs["store"], runs["a"])
    summary = write_report(runs["store"], [runs["a"]], tmp_path / "report")
    reported = summary["runs"][0]["ci"]
    assert _same(asdict(viewed["cis"]), reported)
    assert viewed["cis"].avg.low < viewed["cis"].avg.high  # a real interval, not two NaNs that merely agree
    # And the printed strings: every interval in report.md is on the viewer's page, character for character.
    html, _ = eval_page(runs["store"], runs["a"])
    report = (tmp_path / "report" / "report.md").read_text()
    cis = viewed["cis"]
    for interval in (cis.avg, cis.ir, cis.r2, cis.n_ir, *cis.al):
        text = format_interval(interval)
        assert text in report and text in html, text


def test_compare_prints_what_the_report_prints(runs, tmp_path):
    result = CliRunner().invoke(cli, ["--json", "compare", runs["a"], runs["b"]], env={"ALOE_DB": str(runs["db"])})
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)
    write_report(runs["store"], [runs["a"], runs["b"]], tmp_path / "both")
    reported = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert _same(compared, reported["comparison"])
    assert compared["avg_diff"]["value"] > 0  # the biased judge did score B higher


def test_every_view_bootstraps_the_same_way(runs):
    # Point metrics only (what `aloe eval` prints) or the shared count: any other count would disagree.
    assert math.isnan(run_results(runs["store"], runs["a"], n_boot=0)["cis"].avg.low)
    with pytest.raises(ValueError, match=f"n_boot must be 0 .* or {N_BOOT}"):
        run_results(runs["store"], runs["a"], n_boot=300)
    first, again = run_results(runs["store"], runs["a"]), run_results(runs["store"], runs["a"])
    assert _same(asdict(first["cis"]), asdict(again["cis"]))


def test_a_report_is_written_whole_or_not_at_all(runs, tmp_path, monkeypatch):
    # A full disk at the last file once left al_curve.png (0 bytes on a tmpfs) and report.md behind.
    import errno
    from pathlib import Path

    from aloekit.errors import AloeError

    write_report(runs["store"], [runs["a"]], tmp_path / "report")
    before = {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()}
    original = Path.write_text

    def full_disk(self, *args, **kwargs):
        if "summary" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(AloeError, match=r"^--out .*summary.json: cannot write: No space left on device$"):
        write_report(runs["store"], [runs["b"]], tmp_path / "report")
    with pytest.raises(AloeError):
        write_report(runs["store"], [runs["b"]], tmp_path / "fresh")
    assert {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()} == before  # the earlier report, whole
    assert not list((tmp_path / "fresh").iterdir())
