"""`ops/load`: what one request came to, and whether that answer was acceptable.

Pure functions over bytes the client received, so every rule is tested on hand-made answers.
A request is *bad* when the server answered it wrongly: a 5xx other than a 503 that says when
to retry, a 4xx (every request the load sends is valid), a transport failure we did not cause
ourselves, a stream that ends without `data: [DONE]` or carries malformed or non-OpenAI
chunks, or a body that is not the OpenAI object its status promises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

Endpoint = Literal["chat", "completions"]
EXCERPT_CHARS: Final = 200
FINISH_REASONS: Final = frozenset({"stop", "length"})


@dataclass(frozen=True)
class RequestShape:
    endpoint: Endpoint
    stream: bool

    @property
    def label(self) -> str:
        return f"{self.endpoint} {'stream' if self.stream else 'plain'}"

    @property
    def full_object(self) -> str:
        return "chat.completion" if self.endpoint == "chat" else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"


SHAPES: Final = tuple(
    RequestShape(endpoint, stream)
    for endpoint in ("chat", "completions")
    for stream in (True, False)
)


@dataclass(frozen=True)
class Attempt:
    """What arrived for one request. `status` is None when no response head arrived; `cut`
    means we closed the connection on purpose; `failure` is a transport failure we did not
    cause (refused, reset, timed out)."""

    shape: RequestShape
    status: int | None = None
    retry_after: str | None = None
    body: bytes = b""
    cut: bool = False
    failure: str | None = None


@dataclass(frozen=True)
class Verdict:
    """`label` is the row the request is counted in; `problem` says why it is bad (None: good)."""

    label: str
    problem: str | None = None


def classify(attempt: Attempt) -> Verdict:
    problem = _problem(attempt)
    if problem is not None:
        problem = f"{attempt.shape.label}: {problem}"
    return Verdict(status_label(attempt), problem)


def status_label(attempt: Attempt) -> str:
    if attempt.failure is not None:
        return "transport failure"
    if attempt.status is None:
        return "cut by us before an answer"
    return f"{attempt.status} (cut by us)" if attempt.cut else str(attempt.status)


def _problem(attempt: Attempt) -> str | None:
    if attempt.failure is not None:
        if attempt.status is None:
            return attempt.failure
        return f"{attempt.failure} after {attempt.status} {_excerpt(attempt.body)}"
    if attempt.status is None:
        return None if attempt.cut else "no response and no transport failure"
    if attempt.status == 200:
        if attempt.shape.stream:
            return stream_problem(attempt.shape, attempt.body, complete=not attempt.cut)
        return None if attempt.cut else completion_problem(attempt.shape, attempt.body)
    said = f"{attempt.status} {_excerpt(attempt.body)}"
    body_problem = error_body_problem(attempt.body)
    if body_problem is not None:
        return f"{said}: {body_problem}"
    if attempt.status == 503:
        return None if attempt.retry_after else f"{said}: 503 without Retry-After"
    if attempt.status >= 500:
        return f"{said}: a server error"
    return f"{said}: refused a valid request"


def error_body_problem(body: bytes) -> str | None:
    error = _json(body)
    if not isinstance(error, dict) or not isinstance(error.get("error"), dict):
        return "not an OpenAI error object"
    fields = error["error"]
    if not isinstance(fields.get("message"), str) or not isinstance(fields.get("type"), str):
        return "error object without a message and type"
    return None


def completion_problem(shape: RequestShape, body: bytes) -> str | None:
    reply = _json(body)
    if not isinstance(reply, dict):
        return f"not a JSON object: {_excerpt(body)}"
    if reply.get("object") != shape.full_object:
        return f"object is {reply.get('object')!r}, not {shape.full_object!r}: {_excerpt(body)}"
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return f"no choices: {_excerpt(body)}"
    choice = choices[0]
    chat = shape.endpoint == "chat"
    holder = choice.get("message") if chat else choice
    text = holder.get("content" if chat else "text") if isinstance(holder, dict) else None
    if not isinstance(text, str):
        return f"choice without text: {_excerpt(body)}"
    if choice.get("finish_reason") not in FINISH_REASONS:
        return f"finish_reason {choice.get('finish_reason')!r}: {_excerpt(body)}"
    usage = reply.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
        return f"no usage: {_excerpt(body)}"
    return None


def stream_problem(shape: RequestShape, body: bytes, *, complete: bool) -> str | None:
    """Checks every whole event of an SSE body. `complete` is False when we cut the stream:
    then the unfinished tail is ours and `[DONE]` is not expected."""
    *events, tail = body.replace(b"\r\n", b"\n").split(b"\n\n")
    done, finished = False, False
    for event in events:
        data = _event_data(event)
        if data is None:
            continue  # a comment-only event, such as the server's `: accepted`
        if done:
            return f"data after [DONE]: {_excerpt(data)}"
        if data == b"[DONE]":
            done = True
            continue
        problem = _chunk_problem(shape, data)
        if problem is not None:
            return problem
        finished = finished or _finish_reason(data) is not None
    if not complete:
        return None
    if tail.strip():
        return f"stream ended inside an event: {_excerpt(tail)}"
    if not done:
        return f"stream ended without data: [DONE] after {_excerpt(body[-EXCERPT_CHARS:])}"
    return None if finished else "stream reached [DONE] without a finish_reason"


def data_events(body: bytes) -> int:
    """Whole events carrying data so far: how far into a stream the client has read."""
    return sum(_event_data(e) is not None for e in body.split(b"\n\n")[:-1])


def _event_data(event: bytes) -> bytes | None:
    """The event's data (its `data:` lines joined), or None when it has none."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def _chunk_problem(shape: RequestShape, data: bytes) -> str | None:
    chunk = _json(data)
    if not isinstance(chunk, dict):
        return f"malformed JSON chunk: {_excerpt(data)}"
    if "error" in chunk:
        return f"stream carried an error: {_excerpt(data)}"
    if chunk.get("object") != shape.chunk_object or not isinstance(chunk.get("choices"), list):
        return f"not a {shape.chunk_object} chunk: {_excerpt(data)}"
    for choice in chunk["choices"]:
        key = "delta" if shape.endpoint == "chat" else "text"
        wanted = dict if shape.endpoint == "chat" else str
        if not isinstance(choice, dict) or not isinstance(choice.get(key), wanted):
            return f"chunk choice without {key}: {_excerpt(data)}"
        if choice.get("finish_reason") not in FINISH_REASONS | {None}:
            return f"finish_reason {choice.get('finish_reason')!r}: {_excerpt(data)}"
    return None


def _finish_reason(data: bytes) -> str | None:
    choices = json.loads(data)["choices"]
    reasons = [c["finish_reason"] for c in choices if c.get("finish_reason") is not None]
    return str(reasons[0]) if reasons else None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # UnicodeDecodeError is one too
        return None


def _excerpt(raw: bytes) -> str:
    text = raw.decode(errors="replace")
    if not text:
        return "an empty body"
    return repr(text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…")
