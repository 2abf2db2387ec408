"""``aloe view``: a read-only local web app over the project's database."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aloekit.errors import AloeError
from aloekit.store import Store
from aloekit.viewer.render import esc, eval_page, page, run_page, runs_page, tree_page

logger = logging.getLogger(__name__)

_ID = r"([A-Za-z0-9._:-]{1,200})"
ROUTES: list[tuple[re.Pattern[str], Callable[..., tuple[str, str] | None]]] = [
    (re.compile(r"^/$"), lambda store: runs_page(store)),
    (re.compile(rf"^/runs/{_ID}$"), run_page),
    (re.compile(rf"^/trees/{_ID}$"), tree_page),
    (re.compile(rf"^/evals/{_ID}$"), eval_page),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` resolves to a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def make_handler(db: Path) -> type[BaseHTTPRequestHandler]:
    """A request handler serving pages from ``db``, opened read-only for each request."""

    class ViewerHandler(BaseHTTPRequestHandler):
        server_version = "aloekit-viewer"

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: str, csp: str | None = None, headers: dict[str, str] | None = None) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            if csp:
                self.send_header("Content-Security-Policy", csp)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            body, csp = page(f"{status}", f"<h1>{status}</h1><p>{esc(message)}</p>")
            self._send(status, body, csp, headers)

        def do_GET(self) -> None:  # noqa: N802
            path = unquote(urlsplit(self.path).path)
            for pattern, render in ROUTES:
                match = pattern.match(path)
                if match is None:
                    continue
                store = Store(db, readonly=True)
                try:
                    result = render(store, *match.groups())
                finally:
                    store.close()
                if result is None:
                    self._error(404, f"nothing at {path}")
                else:
                    self._send(200, *result)
                return
            self._error(404, f"nothing at {path}")

        def _refuse(self) -> None:
            self._error(405, "this viewer is read-only: only GET is allowed", {"Allow": "GET"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse  # noqa: N815

    return ViewerHandler


def build_server(
    db: Path, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False
) -> ThreadingHTTPServer:
    """A server for ``db``; refuses a non-loopback host unless ``allow_remote``."""
    if not allow_remote and not is_loopback(host):
        raise AloeError(f"refusing to serve on {host}: not a loopback address (pass --allow-remote to expose it)")
    Store(db, readonly=True).close()  # fail now, with a clear message, if the database is missing or too old
    try:
        server = ThreadingHTTPServer((host, port), make_handler(db))
    except OSError as exc:
        raise AloeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    return server
