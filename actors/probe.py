"""ProbeActor: drive load at a provider and measure it (TTFT, tokens, wall time).

One replicate is `concurrency` identical streaming chat completions, fired together at
`127.0.0.1:port`, each at temperature 0 with a fixed `max_tokens` and
`stream_options.include_usage`, so every stream asks for the same work. Measured:

- TTFT, per stream: milliseconds from that request's start to the first SSE chunk whose
  `delta.content` is non-empty. The server's `: accepted` comment and a role-only first
  delta say nothing about prefill, so they do not count.
- Generated tokens, per stream: the final `usage.completion_tokens`; without usage, the
  number of content chunks (a provider may pack several tokens in one, so this is a floor).
- Wall time, per replicate: the first request's start to the last stream's end.
  Throughput is then all streams' tokens over that wall time (`tuning.replicate_tps`).
- A stop-token leak: any of `stop_texts` in a stream's concatenated content.

A failure is a result, not an exception: an HTTP error status, a broken connection (the
provider died), a stream that ends without `[DONE]` or carries malformed JSON or an error
object, the replicate's timeout, or the shared cancel event (Ctrl-C) each give a failed
`Replicate` with a one-line reason. The first failing stream's reason wins and its siblings
are cancelled: one failure already makes the replicate infeasible.

The measurement is `measure_replicate`, testable without actors; it runs its own trio
event loop on the calling thread (the actor's), with httpx over anyio.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, cast

import httpx
import pykka
import trio
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors.messages import ProbeSpec
from macprovider.actors.trial_outcome import INTERRUPTED
from macprovider.actors.tuning import Replicate

# How often the replicate looks at the cancel event: a Ctrl-C aborts it within ~0.1 s.
CANCEL_POLL_S: Final = 0.05
DONE: Final = "[DONE]"
REASON_MAX_CHARS: Final = 300
BAN_BIAS: Final = -100  # OpenAI's logit_bias floor: the token is never sampled


class _StreamFailed(Exception):
    """One stream cannot be measured; the message is the replicate's reason."""


@dataclass
class _Stream:
    """What one stream measured so far; times are `time.perf_counter()` readings."""

    started: float | None = None
    first_content: float | None = None
    ended: float | None = None
    text: list[str] = field(default_factory=list)
    content_chunks: int = 0
    usage_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.content_chunks

    @property
    def ttft_ms(self) -> float | None:
        if self.started is None or self.first_content is None:
            return None
        return (self.first_content - self.started) * 1000


class _FirstFailure:
    """The replicate's first failure reason; recording one cancels everything still running."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.reason: str | None = None

    def fail(self, reason: str) -> None:
        if self.reason is None:
            self.reason = _one_line(reason)
        self.scope.cancel()


def request_body(spec: ProbeSpec) -> dict[str, Any]:
    """The chat completion every stream of a replicate sends."""
    body: dict[str, Any] = {
        "model": spec.model,
        "messages": [{"role": "user", "content": spec.prompt}],
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if spec.top_p < 1.0:
        body["top_p"] = spec.top_p
    if spec.seed is not None:
        body["seed"] = spec.seed
    bias: dict[str, float] = {str(token): BAN_BIAS for token in spec.banned_tokens}
    bias |= {str(token): value for token, value in spec.bias}
    if bias:
        body["logit_bias"] = bias
    return body


def measure_replicate(spec: ProbeSpec, cancel: threading.Event) -> Replicate:
    """Runs one replicate of `spec` and measures it; see the module docstring.

    Returns within about `spec.timeout_s` (plus connection teardown), and within about
    0.1 s of `cancel` being set. Raises only for a spec that cannot describe a replicate.
    """
    if spec.concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {spec.concurrency}")
    if spec.timeout_s <= 0:
        raise ValueError(f"the timeout must be positive, not {spec.timeout_s}")
    streams = [_Stream() for _ in range(spec.concurrency)]
    reason = trio.run(_run_streams, spec, cancel, streams)
    return _result(spec, streams, reason)


async def _run_streams(
    spec: ProbeSpec, cancel: threading.Event, streams: list[_Stream]
) -> str | None:
    """Drives every stream to its end, a failure, the timeout or a cancel; returns the reason."""
    url = f"http://127.0.0.1:{spec.port}/v1/chat/completions"
    body = request_body(spec)
    # No httpx timeouts: the replicate's own deadline bounds everything. trust_env=False:
    # an HTTP(S)_PROXY from the environment must not see loopback traffic.
    failure = _FirstFailure(trio.CancelScope())
    async with httpx.AsyncClient(trust_env=False, timeout=None) as client:
        with trio.move_on_after(spec.timeout_s) as deadline, failure.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_cancel, cancel, failure)
                async with trio.open_nursery() as stream_nursery:
                    for stream in streams:
                        stream_nursery.start_soon(
                            _measure_stream, client, url, body, stream, failure
                        )
                nursery.cancel_scope.cancel()  # every stream ended: stop the watcher
    if failure.reason is None and deadline.cancelled_caught:
        return f"timed out after {spec.timeout_s:g} s"
    return failure.reason


async def _watch_cancel(cancel: threading.Event, failure: _FirstFailure) -> None:
    # A threading.Event cannot wake a trio task; polling it is the simple bridge.
    while not cancel.is_set():
        await trio.sleep(CANCEL_POLL_S)
    failure.fail(INTERRUPTED)


async def _measure_stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    stream: _Stream,
    failure: _FirstFailure,
) -> None:
    stream.started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code >= 400:
                raise _StreamFailed(_http_error(response.status_code, await response.aread()))
            await _read_events(response, stream)
    except _StreamFailed as error:
        failure.fail(str(error))
    except httpx.TransportError as error:
        failure.fail(f"connection to the provider failed: {_describe(error)}")
    except httpx.HTTPError as error:  # e.g. a body that does not decode
        failure.fail(f"reading the provider's response failed: {_describe(error)}")
    finally:
        stream.ended = time.perf_counter()


async def _read_events(response: httpx.Response, stream: _Stream) -> None:
    async for data in _sse_data(response.aiter_lines()):
        if data == DONE:
            return
        text, usage_tokens = _chunk_fields(data)
        if text:
            if stream.first_content is None:
                stream.first_content = time.perf_counter()
            stream.text.append(text)
            stream.content_chunks += 1
        if usage_tokens is not None:
            stream.usage_tokens = usage_tokens
    raise _StreamFailed(f"the stream ended without {DONE}")


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each SSE event; comments (`: accepted`) and other fields are skipped."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))
        elif not line and data:  # a blank line ends an event
            yield "\n".join(data)
            data = []
    if data:
        yield "\n".join(data)


def _chunk_fields(data: str) -> tuple[str, int | None]:
    """One chunk's content text and, if it carries usage, its `completion_tokens`."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as error:
        raise _StreamFailed(f"malformed JSON in a stream chunk ({error}): {data}") from None
    if not isinstance(chunk, dict):
        raise _StreamFailed(f"a stream chunk is not a JSON object: {data}")
    if "error" in chunk:
        message = _error_message(chunk) or json.dumps(chunk["error"])
        raise _StreamFailed(f"the provider failed mid-stream: {message}")
    choices = chunk.get("choices")
    text = "".join(_delta_content(c) for c in choices) if isinstance(choices, list) else ""
    usage = chunk.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return text, tokens if isinstance(tokens, int) else None


def _delta_content(choice: object) -> str:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _http_error(status: int, body: bytes) -> str:
    """`HTTP 413: <the OpenAI error message>`, or the body's start when it has none."""
    text = body.decode(errors="replace")
    try:
        message = _error_message(json.loads(text))
    except json.JSONDecodeError:
        message = None
    detail = message or text.strip()
    return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"


def _error_message(body: object) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else None


def _describe(error: Exception) -> str:
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _one_line(reason: str) -> str:
    # Reasons end up in a table cell and a terminal line: whitespace-collapsed, bounded.
    line = " ".join(reason.split())
    return line if len(line) <= REASON_MAX_CHARS else line[: REASON_MAX_CHARS - 1] + "…"


def _result(spec: ProbeSpec, streams: list[_Stream], reason: str | None) -> Replicate:
    starts = [s.started for s in streams if s.started is not None]
    ends = [s.ended for s in streams if s.ended is not None]
    wall_s = max(ends) - min(starts) if starts and ends else 0.0
    texts = ["".join(s.text) for s in streams]
    return Replicate(
        ok=reason is None,
        tokens=sum(s.tokens for s in streams),
        wall_s=wall_s,
        ttft_ms=tuple(ttft for s in streams if (ttft := s.ttft_ms) is not None),
        reason=reason,
        stop_token_leaked=any(stop in text for text in texts for stop in spec.stop_texts),
    )


# --- the actor -----------------------------------------------------------------------------


class ProbeActor(pykka.ThreadingActor):
    """Measures one replicate at a time on its own thread, so the Tuner's thread only waits."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self._cancel = cancel

    def replicate(self, spec: ProbeSpec) -> Replicate:
        return measure_replicate(spec, self._cancel)


class ProbeProxy(ActorMemberMixin, pykka.ActorProxy[ProbeActor]):
    """The ProbeActor's methods as mypy sees them through a proxy: each returns a Future."""

    replicate = proxy_method(ProbeActor.replicate)


def start_probe_actor(cancel: threading.Event) -> ProbeProxy:
    """Starts a ProbeActor and returns its typed proxy.

    `cancel` is the run's shared shutdown event: once set, an in-flight replicate ends
    within about 0.1 s as a failed replicate with reason `interrupted`.
    """
    return cast(ProbeProxy, ProbeActor.start(cancel).proxy())
