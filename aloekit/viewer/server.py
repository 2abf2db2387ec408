"""``aloe view``: a read-only local web app over the project's database."""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import sqlite3
import stat
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlite_utils

from aloekit.contents import ContentStore
from aloekit.errors import AloeError
from aloekit.store import SCHEMA_VERSION, Store
from aloekit.viewer.render import esc, eval_page, page, run_page, runs_page, tree_page

logger = logging.getLogger(__name__)

_ID = r"([A-Za-z0-9._:-]{1,200})"
ROUTES: list[tuple[re.Pattern[str], Callable[..., tuple[str, str] | None]]] = [
    (re.compile(r"^/$"), lambda store: runs_page(store)),
    (re.compile(rf"^/runs/{_ID}$"), run_page),
    (re.compile(rf"^/trees/{_ID}$"), tree_page),
    (re.compile(rf"^/evals/{_ID}$"), eval_page),
]
# Names a browser on this machine uses for a loopback server; any other name in a Host header may be an
# attacker's domain re-pointed at 127.0.0.1 (DNS rebinding), so requests carrying it are refused.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
# The tables the pages read: a database without them is not one of ours (or is too old to show).
VIEWER_TABLES = frozenset(
    {"runs", "llm_calls", "conversations", "turns", "tree_nodes", "eval_turns", "judge_audits", "texts"}
)


class _ReadOnlyStore(Store):
    """A :class:`Store` over a connection the viewer opened itself, read-only.

    ``Store(readonly=True)`` puts the raw path into its ``file:`` URI, so a name with ``?`` or ``#`` in it
    is cut short there and SQLite creates a stray file; the viewer builds an escaped URI instead.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        # Deliberately not Store.__init__: it would open the database again, through the unescaped URI.
        self.path = path
        self.readonly = True
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self.contents = ContentStore(conn, self._lock)


def open_readonly(db: Path | str, busy_timeout_s: float = 10.0) -> Store:
    """Open an existing aloekit database read-only, never creating anything; AloeError if it is not one."""
    path = Path(db)
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL byte in the name
        raise AloeError(f"no database at {path}") from None
    except OSError as exc:
        raise AloeError(f"cannot open database {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise AloeError(f"{path} is a folder, not a database")
    if info.st_size == 0:  # SQLite would take it for an empty database and show nothing; say what it is
        raise AloeError(f"{path} is empty, not an aloekit database")
    # as_uri() percent-escapes ?, # and %, so the whole name is the file and mode=ro really applies.
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise AloeError(f"cannot open database {path}: {exc}") from None
    try:
        _check_schema(path, conn)
    except BaseException:
        conn.close()
        raise
    return _ReadOnlyStore(path, conn)


def _check_schema(path: Path, conn: sqlite3.Connection) -> None:
    """Raise a one-line AloeError unless ``conn`` is an aloekit database at this aloekit's schema version."""
    try:
        # SQLite reads the header lazily: a text file "opens" fine and fails on the first query.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_NOTADB:
            raise AloeError(f"{path} is not an SQLite database") from None
        if code == sqlite3.SQLITE_CORRUPT:
            raise AloeError(f"{path} is a damaged SQLite database") from None
        raise AloeError(f"cannot read database {path}: {exc}") from None
    if version == 0 and "runs" not in tables:
        raise AloeError(f"{path} is an SQLite database but not an aloekit one (it has no runs table)")
    if version > SCHEMA_VERSION:
        raise AloeError(f"database {path}: schema version {version} is newer than this aloekit ({SCHEMA_VERSION}); "
                        "upgrade aloekit")  # fmt: skip
    if version < SCHEMA_VERSION:
        raise AloeError(f"database {path}: schema version {version}, this aloekit reads {SCHEMA_VERSION}; "
                        "run any writing aloe command on it once to migrate it")  # fmt: skip
    if missing := sorted(VIEWER_TABLES - tables):
        raise AloeError(f"{path} is not an aloekit database (no {', '.join(missing)} table)")


def _host_key(name: str) -> str:
    """A host name or IP literal in one canonical spelling, so equal hosts compare equal."""
    name = name.strip().lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.removesuffix(".")  # "localhost." is the same name, fully qualified


def _split_host_header(value: str) -> tuple[str, int | None] | None:
    """The host and port of a ``Host`` header (port None when absent); None if it is malformed."""
    value = value.strip()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
        if ":" in port_text:  # an unbracketed IPv6 address is not a valid Host
            return None
    if not name or not re.fullmatch(r"[A-Za-z0-9._:-]+", name):
        return None
    if not port_text:
        return _host_key(name), None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        return None
    return _host_key(name), int(port_text)


class ViewerServer(ThreadingHTTPServer):
    """The viewer's HTTP server: knows its database and which ``Host`` headers name it."""

    daemon_threads = True

    def __init__(
        self,
        sockaddr: tuple[Any, ...],
        family: socket.AddressFamily,
        db: Path,
        host_names: set[str],
        any_ip_literal: bool,
    ) -> None:
        self.address_family = family  # read by TCPServer.__init__ when it makes the socket
        self.db = db
        self.host_names = frozenset(host_names)
        self.any_ip_literal = any_ip_literal
        super().__init__(sockaddr, make_handler(db))

    @property
    def port(self) -> int:
        """The port actually bound (the one asked for, or the free one picked for port 0)."""
        return int(self.server_address[1])

    def host_allowed(self, header: str) -> bool:
        """Whether a ``Host`` header names this server: a known name or address, with the bound port."""
        parsed = _split_host_header(header)
        if parsed is None:
            return False
        name, port = parsed
        if (port if port is not None else 80) != self.port:
            return False
        if name in self.host_names:
            return True
        # Bound to every interface with --allow-remote: clients reach it by any of the machine's addresses,
        # and an IP literal cannot be rebound (the attack needs a domain name the attacker controls).
        if not self.any_ip_literal:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed request in one line when the client went away; anything else with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):  # the client hung up: nothing here to fix
            logger.info("%s went away: %s", client_address[0], exc)
            return
        logger.exception("unexpected error serving %s", client_address[0])


def make_handler(db: Path) -> type[BaseHTTPRequestHandler]:
    """A request handler serving pages from ``db``, opened read-only for each request."""

    class ViewerHandler(BaseHTTPRequestHandler):
        server_version = "aloekit-viewer"
        timeout = 60  # seconds a silent connection may hold its thread
        server: ViewerServer

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), fmt % args)

        def _send(
            self,
            status: int,
            body: str,
            csp: str | None = None,
            headers: dict[str, str] | None = None,
            content_type: str = "text/html; charset=utf-8",
        ) -> None:
            data = body.encode("utf-8", errors="replace")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
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

        def _host_ok(self) -> bool:
            """Answer 421 unless the request carries exactly one Host header naming this server."""
            hosts = self.headers.get_all("Host") or []
            if len(hosts) == 1 and self.server.host_allowed(hosts[0]):
                return True
            # Plain text that does not echo the header: nothing an attacker's page can make use of.
            message = "misdirected request: the Host header does not name this viewer\n"
            self._send(421, message, headers={"Connection": "close"}, content_type="text/plain; charset=utf-8")
            self.close_connection = True
            return False

        def do_GET(self) -> None:  # noqa: N802
            if not self._host_ok():
                return
            if not self.path.startswith("/"):  # "*" or an absolute URL naming some other authority
                self._error(400, "bad request target")
                return
            # Split by hand: urlsplit would take "//name/x" as a network location, not a path.
            path = unquote(self.path.split("?", 1)[0].split("#", 1)[0], errors="replace")
            for pattern, render in ROUTES:
                match = pattern.match(path)
                if match is not None:
                    self._render(path, render, match.groups())
                    return
            self._error(404, f"nothing at {path}")

        def _render(self, path: str, render: Callable[..., tuple[str, str] | None], args: tuple[str, ...]) -> None:
            try:
                store = open_readonly(db)
            except AloeError as exc:  # deleted or replaced since the server started: the client is not at fault
                logger.warning("%s", exc)
                self._error(503, "the database cannot be read right now")
                return
            try:
                result = render(store, *args)
            except AloeError as exc:
                logger.info("%s: %s", path, exc)
                result = None
            except sqlite3.Error as exc:  # e.g. locked by a writer for longer than the busy timeout
                logger.warning("%s: %s", path, exc)
                self._error(503, "the database cannot be read right now")
                return
            except Exception:
                logger.exception("rendering %s failed", path)
                self._error(500, "this page could not be rendered; the viewer's log has the details")
                return
            finally:
                store.close()
            if result is None:
                self._error(404, f"nothing at {path}")
            else:
                self._send(200, *result)

        def _refuse(self) -> None:
            if self._host_ok():
                self._error(405, "this viewer is read-only: only GET is allowed", {"Allow": "GET"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse  # noqa: N815

    return ViewerHandler


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The address family and socket address to bind for ``host``; IPv4 first, as ``localhost`` always was."""
    if not host.strip():  # bind() would take "" for every interface; say so instead of guessing
        raise AloeError("--host is empty: give a name or address, such as 127.0.0.1")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AloeError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    except (OSError, UnicodeError, ValueError) as exc:  # e.g. an over-long label fails IDNA encoding
        raise AloeError(f"--host {host}: not a valid host name ({exc})") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def build_server(db: Path | str, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False) -> ViewerServer:
    """A server for ``db``; refuses a non-loopback host unless ``allow_remote``, and a bad db, port or host."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise AloeError(f"--port {port}: must be a whole number from 0 to 65535 (0 picks a free port)")
    family, sockaddr = _resolve(host, port)
    address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone such as %eth0
    if not allow_remote and not address.is_loopback:
        raise AloeError(f"refusing to serve on {host}: not a loopback address (pass --allow-remote to expose it)")
    path = Path(db)
    open_readonly(path).close()  # fail now, with a clear message, if the database is missing or not ours
    names = set(LOOPBACK_NAMES) | {_host_key(host), str(address)}
    any_ip = allow_remote and address.is_unspecified
    if any_ip:  # reached from elsewhere by the machine's own name too
        names.add(_host_key(socket.gethostname()))
    try:
        return ViewerServer(sockaddr, family, path, names, any_ip)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AloeError(f"--port {port} is in use on {host}: pick another, or --port 0 for a free one") from None
        if exc.errno == errno.EACCES:
            raise AloeError(f"--port {port}: permission denied on {host} (ports below 1024 need root)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise AloeError(f"--host {host}: not an address of this machine, cannot listen on it") from None
        raise AloeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
