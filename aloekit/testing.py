"""Test helpers shipped with the package: a scripted OpenAI-compatible HTTP server on 127.0.0.1.

Used by aloekit's own tests and benchmarks, and by users testing their roles without a real model.
"""

from __future__ import annotations

import functools
import json
import math
import random
import socket
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

    Replies follow ``script`` first, then ``respond(messages)``; with ``fault_rate`` a random share of
    requests fail (500, 429 with Retry-After, malformed JSON, or a reply slower than ``slow_s``).
    A request asking for ``logprobs`` gets, for its first token, ``top_logprobs`` from
    ``distribution(messages)`` (token -> probability), in the OpenAI format (``token``, ``logprob``, ``bytes``).

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
        fault_rate: float = 0.0,
        slow_s: float = 2.0,
        seed: int = 0,
        distribution: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None,
    ) -> None:
        self.script = list(script)
        self.distribution = distribution
        self.respond = respond or (lambda messages: f"stub reply to: {messages[-1]['content'][:40]}")
        self.latency_s = latency_s
        self.model = model
        self.fault_rate = fault_rate
        self.slow_s = slow_s
        self._rng = random.Random(seed)
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
            if self.script:
                return self.script.pop(0)
            if self._rng.random() < self.fault_rate:  # chaos mode, for fault-tolerance tests
                return self._rng.choice(
                    [
                        Reply("status", status=500),
                        Reply("status", status=429, headers={"Retry-After": "0.1"}),
                        Reply("malformed"),
                        Reply("hang", delay_s=self.slow_s),
                    ]
                )
            return Reply()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes; without this, Nagle's algorithm and delayed
                # ACKs add ~40 ms to every response, which would swamp latency measurements.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                if body.get("logprobs") and server.distribution is not None:
                    choice["logprobs"] = server.logprobs(body.get("messages", []), text, body.get("top_logprobs"))
                payload = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", server.model),
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(text.split()),
                        "total_tokens": prompt_tokens + len(text.split()),
                    },
                }
                self._send(200, json.dumps(payload).encode())

        return Handler

    def logprobs(self, messages: list[dict[str, Any]], text: str, top: int | None) -> dict[str, Any]:
        """The ``logprobs`` object of a reply: the first token's top alternatives from ``distribution``."""
        assert self.distribution is not None
        ranked = sorted(self.distribution(messages).items(), key=lambda item: -item[1])[: top or 1]

        def entry(token: str, p: float) -> dict[str, Any]:
            return {"token": token, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(token.encode())}

        first = text.split()[0] if text.split() else text
        chosen = dict(ranked).get(first, 0.0)
        return {"content": [{**entry(first, chosen), "top_logprobs": [entry(t, p) for t, p in ranked]}]}

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


FILLER_WORDS = ("market basil dough oven season garden recipe weekend kitchen spice lemon bread "
                "morning simmer thyme apricot walnut pantry crust sauce").split()  # fmt: skip


def role_aware_reply(messages: list[dict[str, Any]], reply_chars: int = 0) -> str:
    """A plausible answer to any built-in ALOE role prompt, for stub servers in tests and benchmarks.

    With ``reply_chars``, user and assistant replies are extended to about that many characters by words
    drawn from a hash of the prompt, so no two replies share their padding (a store cannot deduplicate
    it away); judge, scorer and inducer answers stay as they are.
    """
    system = str(messages[0].get("content", "")) if messages else ""
    last = str(messages[-1].get("content", "")) if messages else ""
    if "Candidate replies:" in last:
        return "Message 1"
    if last.rstrip().endswith("Score (1-5):"):
        return f"Score: {1 + len(last) % 5}"
    if last.startswith("The chat so far:"):
        return "None" if last.count("User:") <= 1 else "Profile: enjoys cooking\nPersonalities: cheerful"
    if system.startswith("You are playing a real person"):
        reply = f"Just got back from the market, turn {sum(m.get('role') == 'assistant' for m in messages) + 1}!"
    elif "revealed about themselves so far" in system:  # the responder that got the inducer's hint
        reply = f"Oh, a fellow cook! What are you making with what you found? ({last[:30]})"
    else:
        reply = f"That sounds lovely! Tell me more about {last[:30]}"
    if len(reply) >= reply_chars:
        return reply
    rng = random.Random(json.dumps(messages, sort_keys=True))
    words = [reply]
    while sum(len(word) + 1 for word in words) < reply_chars:  # a space after each word
        words.append(rng.choice(FILLER_WORDS))
    return " ".join(words)


def main() -> None:
    """Serve a role-aware stub on 127.0.0.1 until interrupted: ``python -m aloekit.testing --latency-ms 100``."""
    import argparse

    parser = argparse.ArgumentParser(description="A stub OpenAI-compatible server for tests and benchmarks.")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--reply-chars", type=int, default=0,
                        help="extend user and assistant replies to about this many characters")  # fmt: skip
    args = parser.parse_args()
    respond = functools.partial(role_aware_reply, reply_chars=args.reply_chars)
    server = StubOpenAIServer(respond=respond, latency_s=args.latency_ms / 1000, fault_rate=args.fault_rate)
    print(server.spec(), flush=True)  # the first line tells the caller where to connect
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
