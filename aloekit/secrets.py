"""Keep API keys out of the database, logs and exports: they are read from the environment only."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote

_SECRET_ENV_NAMES: set[str] = {"OPENAI_API_KEY"}
_MIN_SECRET_LEN = 8  # shorter values are placeholders, and redacting them would mangle ordinary text


def register_secret_env(name: str) -> None:
    """Mark an environment variable as holding a secret, so its value is redacted everywhere."""
    _SECRET_ENV_NAMES.add(name)


def read_secret(name: str) -> str | None:
    """Read a secret from the environment and remember to redact it."""
    register_secret_env(name)
    return os.environ.get(name) or None


_SECRET_VALUES: set[str] = set()
_URL_CREDENTIALS = re.compile(r"://([^/@:\s]*):([^/@\s]+)@")


def register_url_secrets(text: str) -> None:
    """Remember the password of every ``scheme://user:password@`` URL in ``text`` as a secret to redact: as
    written, percent-decoded, and as the HTTP Basic credentials it is sent as (base64 of ``user:password``),
    which a server's error may echo back."""
    for user, password in _URL_CREDENTIALS.findall(text):
        if len(password) >= _MIN_SECRET_LEN:
            basic = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
            _SECRET_VALUES.update({password, unquote(password), basic})


def redact(text: str) -> str:
    """Replace every known secret (environment variables marked secret, passwords seen in URLs) with ``***``."""
    values = {os.environ.get(name) for name in _SECRET_ENV_NAMES} | _SECRET_VALUES
    for value in values:
        if value and len(value) >= _MIN_SECRET_LEN and value in text:
            text = text.replace(value, "***")
    return text


class RedactingFilter(logging.Filter):
    """Logging filter that redacts secrets from every record before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message, redact it, and keep the record."""
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class RedactingStream:
    """A text stream (stdout, stderr) that redacts secrets from everything written to it, so that no output
    path (a warning naming a backend spec, a summary line, ``config show``) can print a key."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text`` redacted; returns its length as given, as text streams do."""
        if not isinstance(text, str):  # refuse bytes as a text stream does (click probes for a binary stream)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each line redacted."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...: the stream's own
        return getattr(self.stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """Redact secrets from ``sys.stdout`` and ``sys.stderr`` while the block runs."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams
