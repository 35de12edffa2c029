"""A tiny OpenAI-compatible chat server on 127.0.0.1 for offline tests of acdc_lib.llm and its users.

It answers POST /v1/chat/completions (and /chat/completions). Each request takes the next scripted
behaviour from a queue; when the queue is empty `responder(body) -> text` answers (default "OK").

    with FakeOpenAI() as srv:
        srv.push_status(429); srv.push_ok("1. a\\n2. b")
        client = LLMClient(base_url=srv.url, backoff_s=0)
        ...
        assert srv.count == 2

Every request is recorded (path, headers, parsed JSON body) so tests can count them and check where
the Authorization header went. `refused_url()` gives an address with nothing listening.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class Behaviour:
    """One scripted answer: kind is "ok", "slow", "status" or "no_content"."""

    kind: str
    text: str = "OK"
    status: int = 200
    delay: float = 0.0


class FakeOpenAI:
    """The server object: a scripted queue of behaviours, a default responder, a request log."""

    def __init__(self, responder: Callable[[dict], str] | None = None):
        self.queue: list[Behaviour] = []
        self.responder = responder or (lambda body: "OK")
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- scripting
    def push_ok(self, text: str) -> "FakeOpenAI":
        self.queue.append(Behaviour("ok", text=text))
        return self

    def push_slow(self, delay: float, text: str = "OK") -> "FakeOpenAI":
        """Answer only after `delay` seconds (longer than the client's timeout -> APITimeoutError)."""
        self.queue.append(Behaviour("slow", text=text, delay=delay))
        return self

    def push_status(self, status: int, message: str = "scripted error") -> "FakeOpenAI":
        """An HTTP error: 429 -> RateLimitError, 500/503 -> InternalServerError, 400 -> BadRequestError."""
        self.queue.append(Behaviour("status", text=message, status=status))
        return self

    def push_no_content(self) -> "FakeOpenAI":
        """A 200 answer whose message has no content (a malformed response)."""
        self.queue.append(Behaviour("no_content"))
        return self

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "FakeOpenAI":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    beh = server.queue.pop(0) if server.queue else None
                if self.path not in PATHS:
                    return self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                if beh is None:
                    beh = Behaviour("ok", text=server.responder(body))
                if beh.kind == "slow":
                    time.sleep(beh.delay)
                if beh.kind == "status":
                    return self._json(beh.status, {"error": {"message": beh.text, "type": "scripted", "code": beh.status}})
                content = None if beh.kind == "no_content" else beh.text
                self._json(200, {
                    "id": f"chatcmpl-fake-{len(server.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

            def _json(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def refused_url() -> str:
    """The URL of a port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def fake_server():
    """A started FakeOpenAI, stopped after the test."""
    srv = FakeOpenAI().start()
    try:
        yield srv
    finally:
        srv.stop()
