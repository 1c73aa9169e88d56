"""SIGTERM mid-stream on a real `serve`: a drain, then a clear end the client can read."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from mlx_lm.utils import load_tokenizer

from tests.conftest import ServerProcess, StartServer, wait_until

SHUTDOWN_MESSAGE = "the server is shutting down; the request was cancelled"
# Long enough that no request below can end by itself within the drain.
ENDLESS = 60000


def endless_body(model: Path, **fields: Any) -> dict[str, Any]:
    """A request that cannot end early: its stop tokens are banned."""
    eos = load_tokenizer(model).eos_token_ids
    bias = {str(token): -100 for token in eos}
    return {"max_tokens": ENDLESS, "temperature": 0, "logit_bias": bias, **fields}


def data_lines(response: httpx.Response) -> Iterator[str]:
    """The SSE `data:` payloads of a stream, comments and blank lines skipped."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def terminate(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "finishing in-flight" in server.log(), 10, "the SIGTERM log line")


def test_sigterm_ends_streams_with_length_error_and_done(
    start_server: StartServer, tiny_model: Path
) -> None:
    server = start_server(tiny_model, "--max-batch", "2", "--max-context", str(ENDLESS + 100))
    plain: dict[str, httpx.Response] = {}

    def non_streamed() -> None:
        body = endless_body(tiny_model, prompt="Once")
        plain["reply"] = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)

    with httpx.Client(timeout=60) as client:
        body = endless_body(
            tiny_model, prompt="The", stream=True, stream_options={"include_usage": True}
        )
        with client.stream("POST", f"{server.url}/v1/completions", json=body) as response:
            payloads = data_lines(response)
            first = json.loads(next(payloads))
            assert first["choices"][0]["finish_reason"] is None
            waiter = threading.Thread(target=non_streamed)
            waiter.start()
            wait_until(
                lambda: server.metric("macprovider_running_requests") == 2, 30, "both running"
            )
            terminate(server)
            refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "A"}, timeout=10)
            rest = list(payloads)
        waiter.join(timeout=30)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "shutting down" in refused.json()["error"]["message"]
    assert rest[-1] == "[DONE]"
    *chunks, usage, error = (json.loads(p) for p in rest[:-1])
    assert error["error"]["message"] == SHUTDOWN_MESSAGE
    assert error["error"]["type"] == "server_error"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    # Asked for (include_usage): the counts come once, on a last chunk of their own.
    assert usage["choices"] == [] and all(c["usage"] is None for c in chunks)
    assert usage["usage"]["completion_tokens"] < ENDLESS  # cut short, as "length" says
    assert plain["reply"].status_code == 503
    assert plain["reply"].json()["error"]["message"] == SHUTDOWN_MESSAGE
    assert server.proc.wait(timeout=10) == 0


def test_sigterm_mid_stream_raises_api_error_in_the_openai_client(
    start_server: StartServer, tiny_model: Path
) -> None:
    server = start_server(tiny_model, "--max-context", str(ENDLESS + 100))
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    body = endless_body(tiny_model)
    stream = api.chat.completions.create(
        model=str(tiny_model),
        messages=[{"role": "user", "content": "Tell me a story."}],
        stream=True,
        max_tokens=body["max_tokens"],
        temperature=0,
        logit_bias=body["logit_bias"],
    )
    finishes: list[str | None] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if not finishes:
                terminate(server)
            finishes.append(chunk.choices[0].finish_reason)
    assert not isinstance(caught.value, openai.APIConnectionError)
    assert caught.value.message == SHUTDOWN_MESSAGE
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert server.proc.wait(timeout=10) == 0
