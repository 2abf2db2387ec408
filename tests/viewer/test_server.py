"""The viewer's server over real HTTP: Host checks, read-only opening, port/host errors and odd requests."""

from __future__ import annotations

import http.client
import logging
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aloekit.errors import AloeError
from aloekit.graphs import TreeStore
from aloekit.store import SCHEMA_VERSION, Store
from aloekit.viewer import build_server
from aloekit.viewer import server as server_module
from tests.graphs.scripted import PERSONA


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A database with a run whose conversation never started, and a run whose stored config is damaged."""
    db = tmp_path_factory.mktemp("viewer-server") / "aloe.db"
    store = Store(db)
    run = store.start_run("aloe simulate", {}, 0)
    [pending] = TreeStore(store).create_conversations(run, [PERSONA], 3)
    broken = store.start_run("aloe eval", {}, 0)
    store.conn.execute("UPDATE runs SET config = 'not json' WHERE id = ?", [broken])
    store.close()
    return {"db": db, "run": run, "pending": pending, "broken": broken}


@contextmanager
def serving(db: Path, host: str = "127.0.0.1", allow_remote: bool = False) -> Iterator[int]:
    """Serve ``db`` on a free port in a thread; yields the port."""
    server = build_server(db, host, 0, allow_remote)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def port(data) -> Iterator[int]:
    with serving(data["db"]) as bound:
        yield bound


def fetch(
    port: int, path: str = "/", host: str | None = "", method: str = "GET", connect: str = "127.0.0.1"
) -> tuple[int, str, str]:
    """(status, content type, body) for one request; ``host`` None sends no Host header, "" the right one."""
    conn = http.client.HTTPConnection(connect, port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    if host is not None:
        conn.putheader("Host", host or f"127.0.0.1:{port}")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read().decode("utf-8", errors="replace")
    conn.close()
    return response.status, response.getheader("Content-Type", ""), body


def raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are (for request lines http.client refuses to write) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


# DNS rebinding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LocalHost:{port}",
                                  "localhost.:{port}", "[0:0:0:0:0:0:0:1]:{port}"])  # fmt: skip
def test_loopback_host_headers_are_served(port, host):
    assert fetch(port, host=host.format(port=port))[0] == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "evil.example",
        "127.0.0.1.evil.example:{port}",
        "localhost.evil.example:{port}",
        "127.0.0.1:{other}",  # the right name on another port
        "127.0.0.1",  # no port means 80
        "localhost:{port}@evil.example",
        "[::1:{port}",
        "::1:{port}",
        "0.0.0.0:{port}",
        "127.0.0.2:{port}",
        "localhost:99999",
        "",
    ],
)
def test_other_host_headers_are_misdirected(port, host):
    value = host.format(port=port, other=port + 1 if port < 65535 else port - 1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", "/", skip_host=True)
    conn.putheader("Host", value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 421 and response.getheader("Content-Type").startswith("text/plain")
    # Short, and it does not echo the header back.
    assert body == "misdirected request: the Host header does not name this viewer\n"


def test_missing_or_doubled_host_and_other_methods_are_misdirected(port):
    assert fetch(port, host=None)[0] == 421
    assert fetch(port, host="evil.example", method="POST")[0] == 421  # checked before the read-only refusal
    assert fetch(port, method="POST")[0] == 405
    doubled = raw(port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n".encode())
    assert doubled.startswith(b"HTTP/1.0 421 ")
    http09 = raw(port, b"GET /\r\n\r\n")  # HTTP/0.9 has no headers at all, so no Host either
    assert http09 == b"misdirected request: the Host header does not name this viewer\n"


def test_allow_remote_also_accepts_the_given_host(data):
    # 127.0.0.2 is loopback on Linux, so this binds nothing outside the machine.
    with serving(data["db"], "127.0.0.2", allow_remote=True) as bound:
        assert fetch(bound, host=f"127.0.0.2:{bound}", connect="127.0.0.2")[0] == 200
        assert fetch(bound, host=f"localhost:{bound}", connect="127.0.0.2")[0] == 200
        assert fetch(bound, host=f"evil.example:{bound}", connect="127.0.0.2")[0] == 421


def test_every_interface_accepts_ip_literals_but_not_names(data):
    server = build_server(data["db"], "0.0.0.0", 0, allow_remote=True)
    try:
        bound = server.server_address[1]
        assert server.host_allowed(f"192.0.2.7:{bound}") and server.host_allowed(f"[2001:db8::1]:{bound}")
        assert server.host_allowed(f"{socket.gethostname()}:{bound}")
        assert not server.host_allowed(f"evil.example:{bound}") and not server.host_allowed(f"192.0.2.7:{bound + 1}")
    finally:
        server.server_close()


# Opening the database -----------------------------------------------------------------------------------


def _one_line_error(db: Path | str, match: str, **kwargs) -> str:
    with pytest.raises(AloeError, match=match) as info:
        build_server(db, "127.0.0.1", 0, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_database_is_an_error_and_is_not_created(tmp_path):
    assert _one_line_error(tmp_path / "none.db", "no database at") == f"no database at {tmp_path / 'none.db'}"
    (tmp_path / "q").mkdir()
    for name in ("q/a?b.db", "x#y.db", "p%41.db", "q/none.db?mode=rwc"):
        _one_line_error(tmp_path / name, "no database at")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["q"]


def test_files_that_are_not_aloekit_databases(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n" * 10)
    assert _one_line_error(text, "not an SQLite database") == f"{text} is not an SQLite database"
    empty = tmp_path / "empty.db"
    empty.touch()
    _one_line_error(empty, f"{empty} is empty, not an aloekit database")
    _one_line_error(tmp_path, "is a folder, not a database")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    _one_line_error(other, f"{other} is an SQLite database but not an aloekit one")
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
        conn.execute("PRAGMA user_version = 1")
    _one_line_error(old, f"schema version 1, this aloekit reads {SCHEMA_VERSION}")
    new = tmp_path / "new.db"
    with sqlite3.connect(new) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    _one_line_error(new, "is newer than this aloekit")
    # Nothing was written: no journal or WAL files next to any of them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "new.db", "notes.txt", "old.db", "other.db"]


@pytest.mark.parametrize("name", ["q/a?b.db", "x#y.db", "p%41.db", "sp ace.db"])
def test_uri_special_names_open_read_only_without_stray_files(tmp_path, name):
    db = tmp_path / name
    db.parent.mkdir(exist_ok=True)
    Store(db).close()
    before = db.read_bytes()
    with serving(db) as bound:
        status, _, body = fetch(bound)
    assert status == 200 and "<h1>Runs</h1>" in body
    assert db.read_bytes() == before
    # SQLite's own -wal/-shm companions may appear beside a WAL database; nothing else may.
    allowed = {db.name, f"{db.name}-wal", f"{db.name}-shm"}
    assert {p.name for p in db.parent.iterdir() if p.is_file()} <= allowed


# Port and host ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 65536, 2**70])
def test_port_out_of_range(data, bad):
    with pytest.raises(AloeError, match=rf"^--port {bad}: must be a whole number from 0 to 65535"):
        build_server(data["db"], "127.0.0.1", bad)


def test_port_in_use(data):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(AloeError, match=rf"^--port {busy} is in use on 127.0.0.1") as info:
            build_server(data["db"], "127.0.0.1", busy)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "match"),
    [
        ("no-such-host.invalid", r"^--host no-such-host.invalid: cannot resolve it"),
        ("a" * 300, r"^--host a+: not a valid host name"),
        ("", r"^--host is empty"),
        ("0.0.0.0", r"^refusing to serve on 0.0.0.0: not a loopback address"),
    ],
)
def test_unusable_hosts(data, host, match):
    with pytest.raises(AloeError, match=match) as info:
        build_server(data["db"], host, 0)
    assert "\n" not in str(info.value)


def test_ipv6_loopback(data):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with serving(data["db"], "::1") as bound:
        assert fetch(bound, host=f"[::1]:{bound}", connect="::1")[0] == 200


# Odd requests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/runs/",
        "/runs/nope",
        "/trees/nope",
        "/evals/nope",
        "/runs/" + "a" * 201,
        "/%ff%fe%00",
        "/runs/%00",
        "/runs/%",
        "/runs/%zz",
        "/trees/..%2f..%2fetc%2fpasswd",
        "//evil.example/runs/x",
        "/runs/x/",
        "/favicon.ico",
    ],
)
def test_unknown_paths_are_404(port, path):
    status, content_type, body = fetch(port, path)
    assert status == 404 and content_type.startswith("text/html") and "Traceback" not in body


def test_query_strings_and_fragments_are_ignored(port, data):
    for path in ("/?", "/?a=%zz&&==&b", "/?x=%ff%00", "/#frag", f"/runs/{data['run']}?x=1"):
        assert fetch(port, path)[0] == 200, path


def test_odd_request_lines(port):
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    assert raw(port, b"GET http://evil.example/ HTTP/1.1\r\n" + host + b"\r\n").startswith(b"HTTP/1.0 400 ")
    assert raw(port, b"GET * HTTP/1.1\r\n" + host + b"\r\n").startswith(b"HTTP/1.0 400 ")
    assert raw(port, b"GET /\xff\xfe HTTP/1.1\r\n" + host + b"\r\n").startswith(b"HTTP/1.0 404 ")
    assert raw(port, b"BREW / HTTP/1.1\r\n" + host + b"\r\n").startswith(b"HTTP/1.0 501 ")
    assert b"Error code: 400" in raw(port, b"nonsense\r\n\r\n")  # answered as HTTP/0.9: no status line


def test_unfinished_and_damaged_runs_still_render(port, data):
    assert fetch(port, f"/trees/{data['pending']}")[0] == 200  # created, never started: no turns yet
    assert fetch(port, f"/runs/{data['run']}")[0] == 200
    assert fetch(port, f"/evals/{data['run']}")[0] == 404  # a simulation has no evaluation page
    # One run whose stored config is not JSON must not take the index down with it.
    status, _, body = fetch(port, "/")
    assert status == 200 and data["broken"] in body
    assert fetch(port, f"/runs/{data['broken']}")[0] == 200
    assert fetch(port, f"/evals/{data['broken']}")[0] == 404


def test_client_errors_log_no_tracebacks(port, data, capfd, caplog):
    caplog.set_level(logging.INFO, logger="aloekit.viewer.server")
    for path in ("/nope", "/runs/%00", f"/trees/{data['pending']}", "/?a=%zz"):
        fetch(port, path)
    fetch(port, host="evil.example")
    raw(port, b"nonsense\r\n\r\n")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_hanging_up_is_one_quiet_line(data, capfd, caplog):
    server = build_server(data["db"], "127.0.0.1", 0)
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError:
            server.handle_error(None, ("127.0.0.1", 5))
    finally:
        server.server_close()
    assert not [r for r in caplog.records if r.exc_info] and "Traceback" not in capfd.readouterr().err


def test_a_bug_in_a_page_is_a_500_without_the_traceback(port, monkeypatch, caplog):
    def broken(store, run_id):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server_module, "ROUTES", [(server_module.re.compile(r"^/runs/(x)$"), broken)])
    status, _, body = fetch(port, "/runs/x")
    assert status == 500 and "secret detail" not in body and "Traceback" not in body
    assert any(r.exc_info for r in caplog.records)  # the details go to the log, for whoever runs the viewer


def test_database_gone_or_replaced_after_start_is_503(tmp_path):
    db = tmp_path / "aloe.db"
    Store(db).close()
    with serving(db) as bound:
        assert fetch(bound)[0] == 200
        for name in ("aloe.db-wal", "aloe.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        db.write_text("not a database any more")
        status, _, body = fetch(bound)
        assert status == 503 and "Traceback" not in body
        db.unlink()
        assert fetch(bound)[0] == 503
    assert not db.exists()  # and the viewer did not create it again
