"""How a real `serve` ends HTTP/1.1 connections, seen from a raw socket.

Proxies in front of a provider reuse connections, so a connection must either stay usable
after every answer or be closed by the server, announced with `Connection: close`; and the
server must close what it said it would close (a `Connection: close` request, an idle
keep-alive connection) instead of leaving the socket open.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from macprovider.server.app import MAX_BODY_BYTES
from macprovider.server.connections import KEEP_ALIVE_SECONDS
from tests.conftest import ServerProcess

KEY = "k-connections"
KEYED = {"Authorization": f"Bearer {KEY}"}
# Over the limit (so 413 before any of it is read), yet small enough to read and discard.
OVER_LIMIT = MAX_BODY_BYTES + 1024 * 1024
# Any one read waits at most this long: a server that leaves the client hanging fails here.
READ_TIMEOUT = 10.0
# How soon after the moment it should close a connection the server must have done so.
CLOSE_GRACE = 2.0
PIECE = 16 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


class RawConnection:
    """One client socket to the server, read and written by hand so that the test decides
    exactly what the server has seen when it answers."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        self.send(head(method, path, {**headers, "Content-Length": str(len(body))}) + body)

    def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        raw_head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = raw_head.decode("latin1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(int(status_line.split(" ")[1]), headers, body)

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within `seconds`, sending nothing more."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(PIECE)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.buffer += data
            raise AssertionError(f"unexpected bytes after the reply: {self.buffer[:200]!r}")
        return False

    def _receive(self) -> None:
        self.sock.settimeout(READ_TIMEOUT)
        data = self.sock.recv(PIECE)
        if not data:
            raise AssertionError(f"the server closed the connection mid-reply: {self.buffer!r}")
        self.buffer += data


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: provider",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin1")


def chunked(data: bytes) -> bytes:
    return b"".join(
        f"{len(data[i : i + PIECE]):x}\r\n".encode() + data[i : i + PIECE] + b"\r\n"
        for i in range(0, len(data), PIECE)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("connections") / "serve.log"
    server = ServerProcess(tiny_model, log, "--api-key", KEY).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def conn(server: ServerProcess) -> Iterator[RawConnection]:
    connection = RawConnection(server)
    yield connection
    connection.close()


def test_connection_close_request_gets_its_reply_then_eof(conn: RawConnection) -> None:
    conn.request("GET", "/health", {"Connection": "close"})
    reply = conn.reply()
    assert reply.status == 200
    assert conn.closed_within(CLOSE_GRACE), "the server left a `Connection: close` socket open"


def test_idle_keep_alive_connection_is_closed_at_the_timeout(conn: RawConnection) -> None:
    conn.request("GET", "/health", {})
    reply = conn.reply()
    assert reply.status == 200 and not reply.closes
    answered = time.monotonic()
    assert conn.closed_within(KEEP_ALIVE_SECONDS + CLOSE_GRACE), "an idle socket stayed open"
    assert time.monotonic() - answered > KEEP_ALIVE_SECONDS - CLOSE_GRACE, "closed too early"


EARLY_ANSWERS = [
    # (headers of a POST /v1/completions, its whole body as sent, the early status)
    pytest.param({"Content-Length": str(256 * 1024)}, b"x" * 256 * 1024, 401, id="401-sized"),
    pytest.param(
        {"Transfer-Encoding": "chunked"},
        chunked(b"x" * 256 * 1024) + b"0\r\n\r\n",
        401,
        id="401-chunked",
    ),
    pytest.param(
        {**KEYED, "Content-Length": str(OVER_LIMIT)}, b"x" * OVER_LIMIT, 413, id="413-over"
    ),
]


@pytest.mark.parametrize(("headers", "body", "status"), EARLY_ANSWERS)
def test_early_answer_leaves_the_connection_usable_or_closed(
    conn: RawConnection, headers: dict[str, str], body: bytes, status: int
) -> None:
    # The reply is read before the rest of the body is sent, so the server answered
    # without having the body, every time.
    conn.send(head("POST", "/v1/completions", headers) + body[:PIECE])
    reply = conn.reply()
    assert reply.status == status, reply.body
    if reply.closes:
        assert conn.closed_within(CLOSE_GRACE), "`Connection: close` was sent, but not done"
        return
    conn.send(body[PIECE:])
    conn.request("GET", "/v1/models", KEYED)
    assert conn.reply().status == 200, "a keep-alive connection broke after an early answer"


def test_body_far_over_the_limit_is_refused_without_reading_it(conn: RawConnection) -> None:
    far_over = 100 * MAX_BODY_BYTES
    conn.send(head("POST", "/v1/completions", {**KEYED, "Content-Length": str(far_over)}))
    reply = conn.reply()
    assert reply.status == 413 and reply.closes
    assert conn.closed_within(CLOSE_GRACE), "`Connection: close` was sent, but not done"
