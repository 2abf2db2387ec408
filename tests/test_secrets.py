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


def test_a_key_inside_a_backend_url_never_reaches_output_or_the_database(run_aloe, tmp_path):
    # Typed into a spec on the command line or written in a config file: warnings, summaries, `config show`,
    # a failed conversation's stored reason and listings all name the spec, never the key.
    key = "sk-url-0123456789SECRET"
    with StubOpenAIServer([Reply("status", status=500)] * 20) as server:
        spec = server.spec().replace("://", f"://user:{key}@")
        (tmp_path / "aloe.toml").write_text(f'[simulation.judge]\nbackend = "{spec}"\n')
        shown = run_aloe("--config", "aloe.toml", "config", "show", "simulate")
        simulated = run_aloe("simulate", "--conversations", "1", "--turns", "1", "--role", f"all={spec}",
                             env={"ALOE_BACKEND__MAX_RETRIES": "0"})  # fmt: skip
        listed = run_aloe("--json", "trees", "list")
    assert shown.returncode == 0 and "user:***@" in shown.stdout
    assert simulated.returncode == 3 and "failed" in simulated.stdout and "no audit" in simulated.stderr
    assert "user:***@" in listed.stdout  # the failed conversation's reason, read back from the database
    for proc in (shown, simulated, listed):
        assert key not in proc.stdout + proc.stderr
    for path in tmp_path.glob("aloe.db*"):
        assert key.encode() not in path.read_bytes()


def test_progress_text_is_redacted_before_rich_wraps_it():
    # Wrapped across lines, a long key reaches the output streams in pieces that no longer match it.
    import io

    from rich.console import Console

    from aloekit.cli.app import App
    from aloekit.config import AloeConfig
    from aloekit.secrets import register_url_secrets

    key = "sk-proj-" + "x7" * 60
    spec = f"openai:http://user:{key}@127.0.0.1:8000/v1#model"
    register_url_secrets(spec)
    out = io.StringIO()
    App(config=AloeConfig(), console=Console(file=out, width=40)).say(f"chatting with {spec}")
    assert "user:***@" in out.getvalue().replace("\n", "") and key[:20] not in out.getvalue()


def test_a_url_key_is_redacted_in_the_forms_it_travels_in(run_aloe, tmp_path):
    # The user:key@ of a URL goes to the server as HTTP Basic credentials, base64("user:key"), which a
    # server's error or a reply may echo back; the key may also be percent-encoded in the URL.
    import base64

    key = "sk-url%2B0123456789SECRET"  # "+" percent-encoded
    basic = base64.b64encode(b"user:sk-url+0123456789SECRET").decode()
    echo = f"Incorrect API key provided: Basic {basic} (sk-url+0123456789SECRET)"
    with StubOpenAIServer(respond=lambda messages: echo) as server:
        spec = server.spec().replace("://", f"://user:{key}@")
        simulated = run_aloe("simulate", "--conversations", "1", "--turns", "1", "--role", f"all={spec}")
        listed = run_aloe("--json", "trees", "list")
    assert simulated.returncode == 0, simulated.stderr
    for secret in (key, basic, "sk-url+0123456789SECRET"):
        assert secret not in simulated.stdout + simulated.stderr + listed.stdout
        for path in tmp_path.glob("aloe.db*"):
            assert secret.encode() not in path.read_bytes()
