"""Read persona files (JSONL strings or objects, JSON arrays, CSV, plain text) and write them back."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aloekit.errors import AloeError
from aloekit.personas.models import KINDS, Persona, PersonaKind


class PersonaFileError(AloeError):
    """A persona file has malformed entries; the message names the file and line."""


@dataclass
class Entry:
    """One usable entry of a persona file: a single persona, or a profile+personality pair."""

    where: str
    personas: list[Persona]
    is_pair: bool = False


@dataclass
class ParsedFile:
    """What a persona file holds: good entries, bad lines (``file:line: reason``) and warnings."""

    path: Path
    entries: list[Entry] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def personas(self) -> list[Persona]:
        """Every persona in the file, pairs flattened."""
        return [p for entry in self.entries for p in entry.personas]


def _value_to_entry(value: Any, where: str, kind: PersonaKind | None, source: str) -> Entry:
    """Turn one decoded JSON value (or CSV/text cell) into an entry, or raise ValueError with the reason."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty text")
        if kind is None:
            raise ValueError("a plain text entry needs --kind profile|personality")
        return Entry(where, [Persona.new(kind, value, source)])
    if isinstance(value, dict):
        if "profile" in value and "personality" in value:
            profile, personality = value["profile"], value["personality"]
            if not (
                isinstance(profile, str) and profile.strip() and isinstance(personality, str) and personality.strip()
            ):
                raise ValueError("'profile' and 'personality' must be non-empty strings")
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


def read_persona_file(path: Path | str, kind: PersonaKind | None = None) -> ParsedFile:
    """Parse a persona file; the format follows the suffix (.jsonl, .json, .csv, anything else: text)."""
    path = Path(path)
    if not path.is_file():
        raise PersonaFileError(f"{path}: file not found")
    parsed = ParsedFile(path)
    source = path.name
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")

    def add(value: Any, where: str, entry_kind: PersonaKind | None = kind) -> None:
        try:
            parsed.entries.append(_value_to_entry(value, where, entry_kind, source))
        except ValueError as exc:
            parsed.bad.append(f"{where}: {exc}")

    if suffix in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), start=1):
            where = f"{path}:{number}"
            if not line.strip():
                continue
            try:
                values = list(_json_values(line.strip()))
            except json.JSONDecodeError as exc:
                parsed.bad.append(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if len(values) > 1:
                parsed.warnings.append(f"{where}: {len(values)} JSON values on one line; imported each")
            for value in values:
                add(value, where)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PersonaFileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(data, list):
            raise PersonaFileError(f"{path}: expected a JSON array of personas")
        for index, value in enumerate(data):
            add(value, f"{path}: item {index}")
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise PersonaFileError(f"{path}:1: CSV needs a 'text' column (found {reader.fieldnames})")
        for row in reader:
            row_kind = row.get("kind") or kind
            where = f"{path}:{reader.line_num}"
            if row_kind not in (*KINDS, None):
                parsed.bad.append(f"{where}: column 'kind' must be profile or personality, got {row_kind!r}")
                continue
            add(row["text"] or "", where, row_kind)
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                add(line, f"{path}:{number}")
    return parsed


def write_persona_file(personas: Iterable[Persona], path: Path | str) -> int:
    """Write texts in the format the suffix names (.jsonl: one JSON string a line, as the paper's files)."""
    path = Path(path)
    texts = [p.text for p in personas]
    suffix = path.suffix.lower()
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
