"""ProbeActor: what a replicate measures and how it fails, against a scripted stand-in
provider, then the same measurement on the real `serve`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from macprovider.actors.messages import ProbeSpec
from macprovider.actors.probe import measure_replicate, request_body, start_probe_actor
from macprovider.actors.tuning import Replicate
from tests.actors.probe_standin import (
    ACCEPTED,
    DONE,
    Pause,
    Reply,
    Standin,
    content,
    error_body,
    role,
    sse,
    usage,
)
from tests.conftest import StartServer, free_port

IM_END = "<|im_end|>"
ACTOR_TIMEOUT = 20.0  # every future: a wedged actor fails the test instead of hanging it
ARRIVAL_TIMEOUT = 10.0
LONG_TIMEOUT_S = 30.0  # a replicate's timeout the test must never reach

StartStandin = Callable[..., Standin]


@pytest.fixture
def start_standin() -> Iterator[StartStandin]:
    """Starts stand-ins on demand (`start_standin(*replies)`), closes them all afterwards."""
    started: list[Standin] = []

    def start(*replies: Reply) -> Standin:
        started.append(Standin(replies))
        return started[-1]

    yield start
    for standin in started:
        standin.close()


def spec_for(
    port: int,
    *,
    concurrency: int = 1,
    timeout_s: float = LONG_TIMEOUT_S,
    max_tokens: int = 8,
    prompt: str = "Tell me a fable.",
    model: str = "standin-model",
) -> ProbeSpec:
    return ProbeSpec(port, model, prompt, max_tokens, concurrency, timeout_s, (IM_END,))


def measure(spec: ProbeSpec) -> Replicate:
    return measure_replicate(spec, threading.Event())


def streamed(*texts: str, completion_tokens: int | None = None) -> Reply:
    """A well-formed stream: the comment, a role-only delta, the texts, usage, `[DONE]`."""
    tail = (usage(completion_tokens),) if completion_tokens is not None else ()
    return Reply(parts=(ACCEPTED, role(), *map(content, texts), *tail, DONE))


# --- measurements --------------------------------------------------------------------------


def test_every_stream_sends_the_same_greedy_streaming_request_asking_for_usage(
    start_standin: StartStandin,
) -> None:
    standin = start_standin(streamed("hi", completion_tokens=1))
    spec = spec_for(standin.port, concurrency=3, max_tokens=12, prompt="p")

    assert measure(spec).ok
    assert standin.paths == ["/v1/chat/completions"] * 3
    expected = {
        "model": "standin-model",
        "messages": [{"role": "user", "content": "p"}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert standin.bodies == [expected] * 3 and request_body(spec) == expected


def test_tokens_are_the_usage_counts_summed_over_streams(start_standin: StartStandin) -> None:
    # Two content chunks but 7 tokens each: usage is the count, not the chunks.
    standin = start_standin(streamed("Once upon", " a time", completion_tokens=7))

    result = measure(spec_for(standin.port, concurrency=2))

    assert result.ok and result.reason is None
    assert result.tokens == 14
    assert len(result.ttft_ms) == 2 and result.wall_s > 0
    assert not result.stop_token_leaked


def test_without_usage_the_content_chunks_are_counted(start_standin: StartStandin) -> None:
    standin = start_standin(streamed("a", "b", "c"))

    assert measure(spec_for(standin.port)).tokens == 3


def test_ttft_runs_to_the_first_content_not_the_comment_or_role_delta(
    start_standin: StartStandin,
) -> None:
    prefill = 0.3  # the comment, the role and an empty delta arrive at once; content after this
    parts = (ACCEPTED, role(), content(""), Pause(prefill), content("x"), usage(1), DONE)
    standin = start_standin(Reply(parts=parts))

    result = measure(spec_for(standin.port))

    assert result.ok
    (ttft,) = result.ttft_ms
    assert ttft >= prefill * 1000
    assert result.wall_s >= prefill


def test_a_stop_text_split_across_chunks_is_a_leak_not_a_failure(
    start_standin: StartStandin,
) -> None:
    standin = start_standin(streamed("fine<|im_", "end|>and more", completion_tokens=2))

    result = measure(spec_for(standin.port))

    assert result.ok and result.stop_token_leaked


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(status=500, parts=(error_body("the engine failed"),)),
            "HTTP 500: the engine failed",
        ),
        (Reply(status=502, parts=(b"bad gateway\n",)), "HTTP 502: bad gateway"),
        (Reply(status=503), "HTTP 503"),
        (
            Reply(parts=(ACCEPTED, role(), content("a"))),
            "the stream ended without [DONE]",
        ),
        (
            Reply(parts=(ACCEPTED, b"data: {not json\n\n", DONE)),
            "malformed JSON in a stream chunk (",
        ),
        (
            Reply(parts=(ACCEPTED, content("a"), sse({"error": {"message": "oom"}}), DONE)),
            "the provider failed mid-stream: oom",
        ),
        (
            # A provider that dies mid-body: fewer bytes than it promised, then EOF.
            Reply(parts=(ACCEPTED, content("a")), content_length=10_000),
            "connection to the provider failed: RemoteProtocolError: ",
        ),
    ],
)
def test_a_failing_stream_is_a_failed_replicate_with_a_one_line_reason(
    start_standin: StartStandin, reply: Reply, reason: str
) -> None:
    standin = start_standin(reply)

    result = measure(spec_for(standin.port))

    assert not result.ok
    assert result.reason is not None and result.reason.startswith(reason)
    assert "\n" not in result.reason


def test_the_first_failure_cancels_the_sibling_streams(start_standin: StartStandin) -> None:
    # One stream gets the 500, the other an answer that never comes.
    standin = start_standin(Reply(status=500, parts=(error_body("boom"),)), Reply(status=None))

    started = time.monotonic()
    result = measure(spec_for(standin.port, concurrency=2))

    assert result.reason == "HTTP 500: boom"
    assert time.monotonic() - started < LONG_TIMEOUT_S / 4


@pytest.mark.parametrize(
    "reply",
    [Reply(status=None), Reply(parts=(ACCEPTED, role(), content("a")), hang=True)],
    ids=["never-answers", "stalls-mid-stream"],
)
def test_a_replicate_past_its_timeout_fails_as_timed_out(
    start_standin: StartStandin, reply: Reply
) -> None:
    standin = start_standin(reply)

    started = time.monotonic()
    result = measure(spec_for(standin.port, timeout_s=0.5))
    elapsed = time.monotonic() - started

    assert (result.ok, result.reason) == (False, "timed out after 0.5 s")
    assert 0.5 <= elapsed < 3.0


def test_nothing_listening_is_a_connection_failure() -> None:
    result = measure(spec_for(free_port()))

    assert not result.ok
    assert result.reason is not None
    assert result.reason.startswith("connection to the provider failed: ConnectError")


def test_a_replicate_needs_at_least_one_stream() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        measure(spec_for(free_port(), concurrency=0))


# --- the actor -----------------------------------------------------------------------------


def test_the_actor_measures_a_replicate_through_its_proxy(start_standin: StartStandin) -> None:
    standin = start_standin(streamed("a", "b", completion_tokens=5))
    probe = start_probe_actor(threading.Event())
    try:
        result = probe.replicate(spec_for(standin.port, concurrency=2)).get(timeout=ACTOR_TIMEOUT)
    finally:
        probe.stop()

    assert result.ok and result.tokens == 10 and len(result.ttft_ms) == 2


def test_setting_the_cancel_event_interrupts_an_in_flight_replicate_promptly(
    start_standin: StartStandin,
) -> None:
    standin = start_standin(Reply(status=None))
    cancel = threading.Event()
    probe = start_probe_actor(cancel)
    try:
        future = probe.replicate(spec_for(standin.port, concurrency=2))
        standin.wait_for_requests(2, ARRIVAL_TIMEOUT)
        cancel.set()
        interrupted_at = time.monotonic()
        result = future.get(timeout=ACTOR_TIMEOUT)
        elapsed = time.monotonic() - interrupted_at
    finally:
        probe.stop()

    assert (result.ok, result.reason) == (False, "interrupted")
    assert elapsed < 1.0  # the watcher polls every 50 ms; the timeout is 30 s


# --- the real serve ------------------------------------------------------------------------


def greedy_completion_tokens(base_url: str, spec: ProbeSpec) -> int:
    """What one stream of `spec` generates, asked without streaming (temperature 0)."""
    body = request_body(spec) | {"stream": False}
    del body["stream_options"]
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=ACTOR_TIMEOUT)
    answer.raise_for_status()
    tokens: int = answer.json()["usage"]["completion_tokens"]
    return tokens


@pytest.mark.parametrize("concurrency", [1, 2])
def test_real_serve_replicate_counts_every_streams_tokens(
    start_server: StartServer, tiny_model: Path, concurrency: int
) -> None:
    server = start_server(tiny_model, "--max-batch", "2")
    spec = spec_for(server.port, concurrency=concurrency, max_tokens=16, model=str(tiny_model))

    result = measure(spec)

    assert result.ok, result.reason
    # Greedy output is fixed, so one plain request says what each stream generates
    # (the tiny fixture rarely stops before max_tokens, but may).
    assert result.tokens == concurrency * greedy_completion_tokens(server.url, spec)
    assert len(result.ttft_ms) == concurrency and all(t > 0 for t in result.ttft_ms)
    assert result.wall_s > 0 and not result.stop_token_leaked


def test_real_serve_prompt_over_the_context_is_a_413_failure(
    start_server: StartServer, tiny_model: Path
) -> None:
    server = start_server(tiny_model, "--max-context", "64")
    long_prompt = "the fox saw the grapes " * 40
    spec = spec_for(server.port, prompt=long_prompt, model=str(tiny_model))

    result = measure(spec)

    assert not result.ok
    assert result.reason is not None and result.reason.startswith("HTTP 413: ")
    assert "64 tokens" in result.reason  # the provider's own message, not just the status
