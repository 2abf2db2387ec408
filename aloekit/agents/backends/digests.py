"""Content digests of model files, remembered across processes.

Which weights answered is told by content (the response cache, judge audits, resumed runs and GRPO
checkpoints compare it): a copied folder is the same model, a retrained one is not. Reading a large file
takes seconds, so each digest is kept in a small record in the cache, keyed by the file's path, size and
modification time; a later process reads the file again only when one of those changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

DIGEST_HEX = 16
"""Hex digits kept of a SHA-256: enough to tell files apart, short enough to name folders with."""


def file_digest(path: Path) -> str:
    """The first :data:`DIGEST_HEX` hex digits of the file's SHA-256."""
    resolved = path.resolve()
    stat = resolved.stat()
    return _digest(str(resolved), stat.st_size, stat.st_mtime_ns)


def folder_digest(folder: Path) -> str:
    """A digest of every file directly in ``folder`` (hidden ones aside), by name and content; of nothing when
    the folder cannot be read (loading it then fails with its own error)."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and not entry.name.startswith("."))
    except OSError:
        names = []
    contents = [(name, file_digest(folder / name)) for name in names]
    return hashlib.sha256(json.dumps(contents).encode()).hexdigest()[:DIGEST_HEX]


@functools.cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    record = _record_path(path)
    try:
        saved = json.loads(record.read_text())
        if (saved["path"], saved["size"], saved["mtime_ns"]) == (path, size, mtime_ns):
            return str(saved["digest"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: read the file
        pass
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()[:DIGEST_HEX]
    _save(record, {"path": path, "size": size, "mtime_ns": mtime_ns, "digest": digest})
    return digest


def _record_path(path: str) -> Path:
    from aloekit.agents.backends.local import cache_dir

    return cache_dir() / "digests" / f"{hashlib.sha256(path.encode()).hexdigest()[:32]}.json"


def _save(record: Path, content: dict[str, object]) -> None:
    """Write ``record`` beside its place and rename it (a concurrent reader never sees half of it); a cache
    that cannot be written only costs reading the file again next time."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digest-", dir=record.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(content, file)
        os.replace(tmp, record)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
