"""Read persona files (JSONL strings or objects, JSON arrays, CSV, plain text) and write them back.

:func:`iter_persona_file` streams: it holds one line (or CSV row) at a time, so importing a file of
any size takes the same memory. A ``.json`` array is the exception: its text is read whole.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aloekit.errors import AloeError
from aloekit.personas.models import KINDS, Persona, PersonaKind

# Bytes that are not UTF-8 are decoded with ``surrogateescape`` into U+DC80..U+DCFF, so one bad byte
# costs its line (named in the error) rather than aborting the read with a bare UnicodeDecodeError.
_RAW_BYTE = re.compile("[\udc80-\udcff]")
# A JSON escape such as "\ud800" decodes to a lone surrogate, which SQLite cannot store either.
_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class PersonaFileError(AloeError):
    """A persona file has malformed entries; the message names the file and line."""


@dataclass
class Entry:
    """One usable entry of a persona file: a single persona, or a profile+personality pair."""

    where: str
    personas: list[Persona]
    is_pair: bool = False


@dataclass(frozen=True)
class BadLine:
    """An entry that could not be read; ``message`` is ``file:line: reason``."""

    message: str


@dataclass(frozen=True)
class FileWarning:
    """Something odd but recoverable in a persona file; ``message`` is ``file:line: what``."""

    message: str


Item = Entry | BadLine | FileWarning


@dataclass
class ParsedFile:
    """What a persona file holds: good entries, bad lines (``file:line: reason``) and warnings.

    Everything is kept in memory; :meth:`PersonaPool.import_file` streams instead.
    """

    path: Path
    entries: list[Entry] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def personas(self) -> list[Persona]:
        """Every persona in the file, pairs flattened."""
        return [p for entry in self.entries for p in entry.personas]


def _check_text(text: str, name: str) -> None:
    """Reject a text that SQLite cannot store (a lone surrogate, which only a JSON escape can produce here) or
    that no person wrote: NUL characters, which a UTF-16 file without a byte-order mark decodes into."""
    if bad := _SURROGATE.search(text):
        raise ValueError(f"{name} is not valid Unicode (lone surrogate U+{ord(bad.group()):04X})")
    if "\x00" in text:
        raise ValueError(f"{name} holds NUL characters (a UTF-16 file? save it as UTF-8)")


def _undecodable(text: str) -> str | None:
    """Describe the first byte that was not UTF-8 (see ``_RAW_BYTE``), or None."""
    if bad := _RAW_BYTE.search(text):
        return f"not UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02x} at column {bad.start() + 1}"
    return None


def _value_to_entry(value: Any, where: str, kind: PersonaKind | None, source: str) -> Entry:
    """Turn one decoded JSON value (or CSV/text cell) into an entry, or raise ValueError with the reason."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty text")
        if kind is None:
            raise ValueError("a plain text entry needs --kind profile|personality")
        _check_text(value, "text")
        return Entry(where, [Persona.new(kind, value, source)])
    if isinstance(value, dict):
        if "profile" in value and "personality" in value:
            profile, personality = value["profile"], value["personality"]
            if not (
                isinstance(profile, str) and profile.strip() and isinstance(personality, str) and personality.strip()
            ):
                raise ValueError("'profile' and 'personality' must be non-empty strings")
            _check_text(profile, "'profile'")
            _check_text(personality, "'personality'")
            pair = [Persona.new("profile", profile, source), Persona.new("personality", personality, source)]
            return Entry(where, pair, is_pair=True)
        if "text" in value:
            entry_kind = value.get("kind", kind)
            if entry_kind not in (*KINDS, None):
                raise ValueError(f"field 'kind' must be profile or personality, got {entry_kind!r}")
            if not isinstance(value["text"], str):
                raise ValueError("field 'text' must be a string")
            return _value_to_entry(value["text"], where, entry_kind, source)
        raise ValueError("object needs a 'text' field, or 'profile' and 'personality'")
    raise ValueError(f"expected a JSON string or object, got {type(value).__name__}")


def _json_values(line: str) -> Iterator[Any]:
    """Decode one or more JSON values written back to back on a line (a known quirk of some dumps)."""
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(line):
        value, pos = decoder.raw_decode(line, pos)
        yield value
        while pos < len(line) and line[pos] in " \t,":
            pos += 1


def _raise_csv_field_limit() -> None:
    """Lift the csv module's 128 KiB field cap so long personas import; the cap is a C long, so back off."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long is 32 bits on Windows
            limit //= 2


def _open_text(path: Path, newline: str | None = None) -> IO[str]:
    """Open for streaming text, or raise PersonaFileError naming the file (missing, a folder, unreadable)."""
    if path.is_dir():
        raise PersonaFileError(f"{path}: is a directory, not a persona file")
    if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero would fill the memory
        raise PersonaFileError(f"{path}: not a regular file")
    try:
        with path.open("rb") as raw:
            head = raw.read(2)
        handle = path.open(encoding="utf-8-sig", errors="surrogateescape", newline=newline)
    except FileNotFoundError:
        raise PersonaFileError(f"{path}: file not found") from None
    except OSError as exc:
        raise PersonaFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not head:
        handle.close()
        raise PersonaFileError(f"{path}: the file is empty")
    if head in _UTF16_BOMS:  # every line would fail; say why once instead
        handle.close()
        raise PersonaFileError(f"{path}:1: the file starts with a UTF-16 byte-order mark; save it as UTF-8")
    return handle


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, read one at a time."""
    with _open_text(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line.strip()
        except OSError as exc:  # e.g. EIO on a failing disk, mid-file
            raise PersonaFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _iter_jsonl(path: Path, kind: PersonaKind | None, source: str) -> Iterator[Item]:
    for number, line in _lines(path):
        where = f"{path}:{number}"
        if problem := _undecodable(line):
            yield BadLine(f"{where}: {problem}")
            continue
        try:
            values = list(_json_values(line))  # the values of one line, not of the file
        except json.JSONDecodeError as exc:
            yield BadLine(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:  # "[[[[..." deeper than the C decoder allows
            yield BadLine(f"{where}: invalid JSON: nested too deeply")
            continue
        if len(values) > 1:
            yield FileWarning(f"{where}: {len(values)} JSON values on one line; imported each")
        for value in values:
            yield _entry_or_bad(value, where, kind, source)


def _iter_text(path: Path, kind: PersonaKind | None, source: str) -> Iterator[Item]:
    for number, line in _lines(path):
        where = f"{path}:{number}"
        problem = _undecodable(line)
        yield BadLine(f"{where}: {problem}") if problem else _entry_or_bad(line, where, kind, source)


def _iter_csv(path: Path, kind: PersonaKind | None, source: str) -> Iterator[Item]:
    _raise_csv_field_limit()
    with _open_text(path, newline="") as handle:  # newline="" lets csv see quoted line breaks
        # strict: an unterminated quote is an error, not the rest of the file swallowed into one persona
        reader = csv.DictReader(handle, strict=True)
        row_start = 1
        try:
            if not reader.fieldnames or "text" not in reader.fieldnames:
                raise PersonaFileError(f"{path}:1: CSV needs a 'text' column (found {reader.fieldnames})")
            row_start = reader.line_num + 1
            for row in reader:
                where = f"{path}:{reader.line_num}"
                text, row_kind = row["text"] or "", row.get("kind") or kind
                if problem := _undecodable(text):
                    yield BadLine(f"{where}: column 'text' is {problem}")
                elif row_kind not in (*KINDS, None):
                    yield BadLine(f"{where}: column 'kind' must be profile or personality, got {row_kind!r}")
                else:
                    yield _entry_or_bad(text, where, row_kind, source)
                row_start = reader.line_num + 1
        except csv.Error as exc:  # named by the line its row starts on: a stray quote opens a row that never ends
            raise PersonaFileError(f"{path}:{row_start}: malformed CSV: {exc}") from None
        except OSError as exc:
            raise PersonaFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _iter_json(path: Path, kind: PersonaKind | None, source: str) -> Iterator[Item]:
    # A JSON array is read whole (use .jsonl for files too big for memory); its items are then decoded
    # one at a time, so each error names the line where it happens and no list of values is built.
    with _open_text(path) as handle:
        try:
            text = handle.read()
        except OSError as exc:
            raise PersonaFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    decoder = json.JSONDecoder()
    counted = [0, 1]  # (position, line there): line numbers advance incrementally, never recounted

    def line_of(pos: int) -> int:
        if pos < counted[0]:
            return text.count("\n", 0, pos) + 1
        counted[:] = [pos, counted[1] + text.count("\n", counted[0], pos)]
        return counted[1]

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    if bad := _RAW_BYTE.search(text):
        column = bad.start() - text.rfind("\n", 0, bad.start())
        where = f"{path}:{line_of(bad.start())}"
        raise PersonaFileError(f"{where}: not UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02x} at column {column}")
    pos = skip_space(0)
    if pos == len(text):
        raise PersonaFileError(f"{path}: the file is blank (expected a JSON array of personas)")
    if text[pos] != "[":
        found = {"{": "an object", '"': "a string"}.get(text[pos], "something else")
        raise PersonaFileError(f"{path}:{line_of(pos)}: expected a JSON array of personas, found {found}")
    pos, index = skip_space(pos + 1), 0
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise PersonaFileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                where = f"{path}:{line_of(pos)}"
                raise PersonaFileError(f"{where}: invalid JSON: item {index} is nested too deeply") from None
            yield _entry_or_bad(value, f"{path}:{line_of(pos)}: item {index}", kind, source)
            pos, index = skip_space(end), index + 1
            if pos < len(text) and text[pos] == ",":
                pos = skip_space(pos + 1)
            elif pos < len(text) and text[pos] == "]":
                pos += 1
                break
            else:
                where = f"{path}:{line_of(pos)}"
                raise PersonaFileError(f"{where}: invalid JSON: expected ',' or ']' after item {index - 1}")
    if skip_space(pos) != len(text):
        raise PersonaFileError(f"{path}:{line_of(skip_space(pos))}: invalid JSON: extra data after the array")


def _entry_or_bad(value: Any, where: str, kind: PersonaKind | None, source: str) -> Entry | BadLine:
    try:
        return _value_to_entry(value, where, kind, source)
    except ValueError as exc:
        return BadLine(f"{where}: {exc}")


def _reader(path: Path) -> Callable[[Path, PersonaKind | None, str], Iterator[Item]]:
    """The reader of the format ``path``'s suffix names (no suffix: one text a line), or
    :class:`PersonaFileError` for another suffix."""
    readers = {".jsonl": _iter_jsonl, ".ndjson": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv,
               ".txt": _iter_text, "": _iter_text}  # fmt: skip
    return readers[persona_file_suffix(path) if path.suffix else ""]


def check_persona_file(path: Path | str) -> None:
    """Refuse, without reading past its first bytes, a persona file :func:`iter_persona_file` would refuse as a
    whole: an unknown suffix, missing, a folder, empty, UTF-16 (several files are checked before any is
    imported)."""
    path = Path(path)
    _reader(path)
    _open_text(path).close()


def iter_persona_file(path: Path | str, kind: PersonaKind | None = None) -> Iterator[Item]:
    """Stream a persona file as entries, bad lines and warnings; the format follows the suffix.

    ``.jsonl``/``.ndjson``: one JSON string or object a line; ``.json``: an array; ``.csv``: a ``text``
    column (and optionally ``kind``); ``.txt`` or no suffix: one text a line. Another suffix (``.jsnol``, a
    typo) is refused: read as text, each JSON line would become a persona's text. A problem with the file as a whole
    (missing, a folder, empty, UTF-16, malformed CSV or JSON array, no entries at all) raises
    :class:`PersonaFileError`, naming the file and, where there is one, the line.
    """
    path = Path(path)
    items = _reader(path)(path, kind, path.name)
    found = False
    for item in items:
        found = found or not isinstance(item, FileWarning)
        yield item
    if not found:  # a file with nothing in it is almost always a mistake (wrong file, failed export)
        raise PersonaFileError(f"{path}: no personas in the file")


def read_persona_file(path: Path | str, kind: PersonaKind | None = None) -> ParsedFile:
    """Parse a whole persona file into memory (for small files such as seeds and eval sets)."""
    parsed = ParsedFile(Path(path))
    for item in iter_persona_file(path, kind):
        if isinstance(item, Entry):
            parsed.entries.append(item)
        elif isinstance(item, BadLine):
            parsed.bad.append(item.message)
        else:
            parsed.warnings.append(item.message)
    return parsed


def persona_file_suffix(path: Path) -> str:
    """The format ``path``'s suffix names for a persona file, or :class:`PersonaFileError` naming ``path``."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".txt"):
        raise PersonaFileError(f"{path}: unknown format {suffix or '(no suffix)'!r} (use .jsonl, .json, .csv or .txt)")
    return suffix


def write_persona_file(personas: Iterable[Persona], path: Path | str) -> int:
    """Write texts in the format the suffix names (.jsonl: one JSON string a line, as the paper's files)."""
    path = Path(path)
    suffix = persona_file_suffix(path)
    texts = [p.text for p in personas]
    if suffix in (".jsonl", ".ndjson"):
        body = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)
    elif suffix == ".json":
        body = json.dumps(texts, ensure_ascii=False, indent=1) + "\n"
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text"])
            writer.writerows([t] for t in texts)
        return len(texts)
    else:
        body = "".join(t + "\n" for t in texts)
    path.write_text(body, encoding="utf-8")
    return len(texts)
