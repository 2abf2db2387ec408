"""Output files written whole or not at all: checked paths that name their flag in one-line errors, and
writes to a temporary file beside the target, renamed into place (a full disk leaves no partial file)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from aloekit.errors import AloeError


def output_file(path: Path, flag: str) -> Path:
    """Check that ``path`` can be written as a file (creating its folder); fail with one line naming ``flag``."""
    if path.is_dir():
        raise AloeError(f"{flag} {path}: is a folder, expected a file path")
    if (path.is_fifo() or path.is_socket()) and not is_stream_path(path):  # a write would wait for a reader
        raise AloeError(f"{flag} {path}: is a {'pipe' if path.is_fifo() else 'socket'}, expected a file path")
    _make_folder(path.parent, flag, path)
    return path


def is_stream_path(path: Path) -> bool:
    """Whether ``path`` names a device or a process's stream (``/dev/stdout``, ``/dev/fd/3``, ``>(...)``):
    written in place, whatever it resolves to."""
    return any(str(p).startswith(("/dev/", "/proc/")) for p in (path.absolute(), path.resolve()))


def write_whole(path: Path, flag: str, write: Callable[[Path], object]) -> None:
    """Run ``write`` on a temporary file beside ``path``, then put it in place with the old file's permissions:
    a full disk or any other error leaves no partial file, and an existing one as it was. A device or stream
    (``/dev/stdout``) is written directly."""
    write_files([(path, flag, write)])


def write_files(outputs: Sequence[tuple[Path, str, Callable[[Path], object]]], stale: Sequence[Path] = ()) -> None:
    """:func:`write_whole` for files that belong together (a training file and its validation split): each
    ``(path, flag, write)`` is written to its temporary file first; only when all are written are the ``stale``
    files of an earlier set removed and the new ones put in place (renames, which do not fail for want of
    space), so a write error, a full disk, leaves the old set as it was."""
    targets: list[tuple[Path, str, Path]] = []
    for path, flag, _ in outputs:
        output_file(path, flag)
        if path.is_file() and not os.access(path, os.W_OK):
            raise AloeError(f"{flag} {path}: the file is read-only")
    for path in stale:
        if path.is_file() and not os.access(path, os.W_OK):
            raise AloeError(f"{path}: the file is read-only (an earlier set's, which this one replaces)")
    try:
        for path, flag, write in outputs:
            if is_stream_path(path) or (path.exists() and not path.is_file()):
                target = path
            else:  # same suffix: same format
                target = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
            targets.append((path, flag, target))
            try:
                write(target)
            except OSError as exc:
                raise AloeError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None
        for path in stale:  # first: a file that cannot go fails the set before anything is replaced
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise AloeError(f"{path}: cannot remove it: {exc.strerror or exc}") from None
        for path, flag, target in targets:
            try:
                if target != path:
                    if path.is_file():
                        shutil.copymode(path, target)
                    os.replace(target, path)
            except OSError as exc:
                raise AloeError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None
    finally:
        for path, _, target in targets:
            if target != path:
                target.unlink(missing_ok=True)


def output_folder(path: Path, flag: str) -> Path:
    """Check that ``path`` is or can become a folder; fail with one line naming ``flag``."""
    if path.exists() and not path.is_dir():
        raise AloeError(f"{flag} {path}: is a file, expected a folder")
    _make_folder(path, flag, path)
    return path


def _make_folder(folder: Path, flag: str, path: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AloeError(f"{flag} {path}: cannot create folder {folder}: {exc.strerror or exc}") from None


def write_text(path: Path, text: str, flag: str) -> None:
    """Write ``text`` to a checked output file, whole or not at all, reporting OS errors in one line."""
    write_whole(path, flag, lambda target: target.write_text(text, encoding="utf-8"))
