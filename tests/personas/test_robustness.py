"""Generation settings are range-checked; embedder failures are one redacted line."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from aloekit.errors import AloeError, BackendError, SpecError
from aloekit.personas import GenerationConfig, get_embedder
from aloekit.personas.embedding import OpenAIEmbedder

KEY = "sk-test-SECRET-123456"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", 0),
        ("threshold", 0),
        ("threshold", 1.01),
        ("threshold", -0.5),
        ("threshold", float("nan")),
        ("examples_per_prompt", 0),
        ("candidates_per_round", 0),
        ("max_rounds", 0),
        ("saturation_rounds", 0),
        ("saturation_min_new", -1),
        ("max_tokens", 0),
        ("temperature", -0.1),
        ("temperature", float("inf")),
        ("repetition_penalty", 0),
        ("repetition_penalty", -1.0),
    ],
)
def test_generation_config_rejects_out_of_range_values(field, value):
    settings = {"kind": "profile", "target": 10, field: value}
    with pytest.raises(ValidationError) as caught:
        GenerationConfig(**settings)
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_generation_config_accepts_boundary_values():
    config = GenerationConfig(kind="profile", target=1, threshold=1, saturation_min_new=0, temperature=0, max_tokens=1)
    assert (config.threshold, config.temperature, config.repetition_penalty) == (1, 0, None)


@pytest.mark.parametrize("spec", ["nope", "nope:x", "st:", "openai:", "mini lm\nx"])
def test_unknown_embedder_is_one_line(spec):
    with pytest.raises(SpecError) as caught:
        get_embedder(spec)
    assert "\n" not in str(caught.value) and "unknown embedder" in str(caught.value)


def test_malformed_openai_embedder_url_is_one_line():
    with pytest.raises(SpecError, match="needs the model after '#'") as caught:
        get_embedder("openai:http://127.0.0.1:9/v1")
    assert "\n" not in str(caught.value)


def test_unreachable_embedding_server_is_one_line_without_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    embedder = get_embedder("openai:http://127.0.0.1:9/v1#embed")  # port 9 (discard): nothing listens
    with pytest.raises(BackendError) as caught:
        embedder.embed(["a text"])
    message = str(caught.value)
    assert message.startswith("openai:http://127.0.0.1:9/v1#embed: embedding request failed: APIConnectionError")
    assert KEY not in message and "\n" not in message


class _Server:
    """A one-route HTTP server that answers every POST with ``status`` and ``body(authorization)``."""

    def __init__(self, status, body):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                payload = body(self.headers.get("Authorization", "")).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_error_reply_echoing_the_key_is_redacted(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    echo = lambda auth: json.dumps({"error": {"message": f"invalid key:\n{auth}", "type": "auth"}})  # noqa: E731
    with _Server(401, echo) as server:
        with pytest.raises(BackendError) as caught:
            get_embedder(f"openai:{server.url}#embed").embed(["a text"])
    message = str(caught.value)
    assert "HTTP 401" in message and "Bearer ***" in message
    assert KEY not in message and "\n" not in message


@pytest.mark.parametrize(
    "body",
    [
        lambda auth: json.dumps({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]}),
        lambda auth: "not json at all",
        lambda auth: json.dumps({"data": [{"embedding": "x"}, {"embedding": [1, 2]}]}),
    ],
)
def test_malformed_embeddings_reply_is_a_backend_error(monkeypatch, body):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with _Server(200, body) as server:
        with pytest.raises(BackendError) as caught:
            OpenAIEmbedder("embed", server.url, max_retries=0).embed(["one", "two"])
    assert KEY not in str(caught.value) and "\n" not in str(caught.value)


def test_backend_and_spec_errors_are_aloe_errors():
    assert issubclass(BackendError, AloeError) and issubclass(SpecError, AloeError)
