"""A scripted stand-in for a provider's streaming `/v1/chat/completions`, for the ProbeActor's
tests: what a real `serve` does not do on demand (leak a stop token, hang, break a stream).

An in-process `http.server` on a free loopback port. Each request is answered by the next
`Reply` of its script (the last one repeats), written part by part; HTTP/1.0, so a body
ends when the connection closes. Every request body is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCEPTED = b": accepted\n\n"
DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def role() -> bytes:
    """A first delta with the role only, as OpenAI-style servers send it."""
    return sse({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})


def content(text: str) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


def usage(completion_tokens: int) -> bytes:
    """The usage-only chunk `stream_options.include_usage` asks for."""
    counts = {"prompt_tokens": 5, "completion_tokens": completion_tokens}
    return sse({"choices": [], "usage": counts | {"total_tokens": 5 + completion_tokens}})


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error"}}).encode()


@dataclass(frozen=True)
class Pause:
    """Scripted latency inside a reply (e.g. prefill before the first token)."""

    seconds: float


@dataclass(frozen=True)
class Reply:
    status: int | None = 200  # None: read the request, then never answer
    parts: tuple[bytes | Pause, ...] = ()  # the body, each part written and flushed in turn
    hang: bool = False  # after the parts, hold the connection open until the stand-in closes
    content_length: int | None = None  # a promise the parts may break, as a dying server does


class Standin(ThreadingHTTPServer):
    def __init__(self, replies: tuple[Reply, ...]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port: int = self.server_address[1]
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._replies = replies
        self._arrived = threading.Condition()
        self.released = threading.Event()  # ends every hang
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def take(self, path: str, body: dict[str, Any]) -> Reply:
        with self._arrived:
            self.paths.append(path)
            self.bodies.append(body)
            self._arrived.notify_all()
            return self._replies[min(len(self.bodies), len(self._replies)) - 1]

    def wait_for_requests(self, count: int, timeout: float) -> None:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.bodies) >= count, timeout):
                raise AssertionError(f"{len(self.bodies)} of {count} requests in {timeout} s")

    def close(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()
        self._thread.join()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a probe that cancels its streams breaks pipes on purpose


class _Handler(BaseHTTPRequestHandler):
    server: Standin

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = self.server.take(self.path, body)
        if reply.status is not None:
            self._answer(reply)
        if reply.status is None or reply.hang:
            self.server.released.wait()

    def _answer(self, reply: Reply) -> None:
        assert reply.status is not None
        self.send_response(reply.status)
        kind = "text/event-stream" if reply.status < 400 else "application/json"
        self.send_header("Content-Type", kind)
        if reply.content_length is not None:
            self.send_header("Content-Length", str(reply.content_length))
        self.end_headers()
        for part in reply.parts:
            if isinstance(part, Pause):
                time.sleep(part.seconds)  # the scripted latency itself, not a synchronisation
            else:
                self.wfile.write(part)
                self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests look at the recorded requests instead
