"""How HTTP/1.1 connections end: an ASGI middleware that makes Hypercorn's trio worker close
or keep each connection as it should.

Two things go wrong with Hypercorn 0.18's trio worker and quart-trio, unmended:

- Hypercorn finishes each request (recycles the connection, starts its keep-alive timer, or
  closes the socket) inside the app's last `send()`, and in that same call hands the app
  `http.disconnect`; quart-trio cancels the request's tasks on that message, so the work is
  cut off at its first checkpoint. `Connection: close` sockets then stay open and idle ones
  are never timed out. So every `send()` is shielded from the app's cancellation.
- An early answer (401, 413, 503: anything sent before the request body was read) goes out
  without `Connection: close`, and Hypercorn then neither reads the rest of the body nor
  closes, leaving a client that reuses the connection hanging. So an early answer to a body
  of known size within `drain_bytes` is ended only once the rest of the body has arrived
  (and been discarded), which keeps the connection; any other early answer says
  `Connection: close`, and Hypercorn closes after it.

Nothing here reaches into Hypercorn; if it changes, tests/server/test_connections.py says
whether this is still right.
"""

from __future__ import annotations

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)

# Hypercorn closes a connection idle this long; a proxy in front must give up on idle
# connections sooner, or it may send a request on one the server is just closing.
KEEP_ALIVE_SECONDS = 5.0


class _Exchange:
    """One request and its response, as far as ending the connection is concerned."""

    def __init__(
        self,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        drain_bytes: int,
        drain_seconds: float,
    ) -> None:
        self._receive = receive
        self._send = send
        self._drain_bytes = drain_bytes
        self._drain_seconds = drain_seconds
        headers = {name.lower(): value for name, value in scope["headers"]}
        length = headers.get(b"content-length")
        # h11 has already refused a request whose Content-Length is not a number.
        self._declared = int(length) if length is not None else None
        self._received = 0
        self._body_done = trio.Event()
        if b"transfer-encoding" not in headers and not self._declared:
            self._body_done.set()
        self._drain = False

    async def receive(self) -> ASGIReceiveEvent:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._body_done.set()
        elif message["type"] == "http.disconnect":
            self._body_done.set()
        return message

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and not self._body_done.is_set():
            message = self._early(message)
        elif (
            self._drain
            and message["type"] == "http.response.body"
            and not message.get("more_body", False)
        ):
            # A client too slow to finish its body gets the connection closed instead.
            with trio.move_on_after(self._drain_seconds):
                await self._body_done.wait()
        with trio.CancelScope(shield=True):
            await self._send(message)

    def _early(self, start: HTTPResponseStartEvent) -> HTTPResponseStartEvent:
        unread = None if self._declared is None else self._declared - self._received
        if unread is not None and unread <= self._drain_bytes:
            self._drain = True
            return start
        headers = [*start.get("headers", []), (b"connection", b"close")]
        return {**start, "headers": headers}


def mend_connections(
    app: ASGIFramework, *, drain_bytes: int, drain_seconds: float
) -> ASGIFramework:
    """`app`, with every HTTP connection closed or kept as described above."""

    async def mended(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, drain_bytes, drain_seconds)
        await app(scope, exchange.receive, exchange.send)

    return mended
