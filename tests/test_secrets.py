import logging

from aloekit.secrets import RedactingFilter, redact
from aloekit.testing import Reply, StubOpenAIServer

SECRET = "sk-test-0123456789abcdefSECRET"


def test_api_key_never_reaches_database_or_logs(run_aloe, tmp_path):
    env = {"OPENAI_API_KEY": SECRET}
    with StubOpenAIServer([Reply(text="ok"), Reply("status", status=500), Reply("status", status=401)]) as server:
        ok = run_aloe("-vv", "backends", "check", server.spec(), env=env)
        failed = run_aloe("-vv", "--json", "backends", "check", server.spec(), env=env)
        assert server.auth_headers[0] == f"Bearer {SECRET}"  # the key was really used
    assert ok.returncode == 0 and failed.returncode == 1
    for text in (ok.stdout, ok.stderr, failed.stdout, failed.stderr):
        assert SECRET not in text
    assert "DEBUG" in ok.stderr or "debug" in ok.stderr.lower()  # the logs were really verbose
    for path in tmp_path.glob("aloe.db*"):
        assert SECRET.encode() not in path.read_bytes()


def test_redaction(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert redact(f"Incorrect API key provided: {SECRET}.") == "Incorrect API key provided: ***."
    record = logging.LogRecord("x", logging.INFO, "f", 1, "key=%s", (SECRET,), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "key=***"
