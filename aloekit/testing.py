"""Test helpers shipped with the package: a scripted OpenAI-compatible HTTP server on 127.0.0.1.

Used by aloekit's own tests and benchmarks, and by users testing their roles without a real model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted server behaviour, consumed by the next request.

    ``kind``: ``ok`` (a completion with ``text``), ``status`` (HTTP ``status`` with ``headers``),
    ``hang`` (sleep ``delay_s`` then answer ok), ``malformed`` (200 with a body that is not JSON).
    """

    kind: str = "ok"
    text: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class StubOpenAIServer:
    """A threaded OpenAI-compatible ``/v1/chat/completions`` server for tests and benchmarks.

    Example:
        >>> with StubOpenAIServer(script=[Reply("status", status=500)]) as server:
        ...     spec = server.spec()  # "openai:http://127.0.0.1:PORT/v1#stub"
    """

    def __init__(
        self,
        script: Iterable[Reply] = (),
        *,
        respond: Callable[[list[dict[str, Any]]], str] | None = None,
        latency_s: float = 0.0,
        model: str = "stub",
    ) -> None:
        self.script = list(script)
        self.respond = respond or (lambda messages: f"stub reply to: {messages[-1]['content'][:40]}")
        self.latency_s = latency_s
        self.model = model
        self.requests: list[dict[str, Any]] = []  # bodies received, in order
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def spec(self) -> str:
        """The aloekit backend spec addressing this server."""
        return f"openai:{self.base_url}#{self.model}"

    def _next(self, body: dict[str, Any], auth: str | None) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.auth_headers.append(auth)
            return self.script.pop(0) if self.script else Reply()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:  # noqa: N802
                payload = {"object": "list", "data": [{"id": server.model, "object": "model"}]}
                self._send(200, json.dumps(payload).encode())

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = server._next(body, self.headers.get("Authorization"))
                time.sleep(server.latency_s + reply.delay_s)
                if reply.kind == "status":
                    error = {
                        "error": {
                            "message": f"stub error {reply.status}",
                            "type": "stub",
                            "code": reply.status,
                        }
                    }
                    self._send(reply.status, json.dumps(error).encode(), reply.headers)
                    return
                if reply.kind == "malformed":
                    self._send(200, b'{"id": "x", "choices": [')
                    return
                text = reply.text if reply.text is not None else server.respond(body.get("messages", []))
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                payload = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", server.model),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(text.split()),
                        "total_tokens": prompt_tokens + len(text.split()),
                    },
                }
                self._send(200, json.dumps(payload).encode())

        return Handler

    def start(self) -> StubOpenAIServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StubOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
