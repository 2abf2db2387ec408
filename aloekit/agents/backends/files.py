"""Reading the JSON files a backend spec points at, with one-line errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aloekit.errors import BackendError


def read_json_file(path: Path, label: str) -> Any:
    """Parse the JSON file at ``path``; any failure is a :class:`BackendError` starting with ``label``."""
    if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero would fill the memory
        raise BackendError(f"{label}: not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackendError(f"{label}: not found") from None
    except UnicodeDecodeError as exc:
        raise BackendError(f"{label}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise BackendError(f"{label}: cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackendError(f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise BackendError(f"{label}: JSON nested too deeply") from None
