"""Response shapes as OpenAI's spec has them, where clients (LangChain, LiteLLM) depend on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import ServerProcess, StartServer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a story about a fox."}
]


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def served(server: ServerProcess) -> str:
    return str(httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"])


def test_chat_message_has_a_null_refusal(shared_server: ServerProcess) -> None:
    body = {"messages": MESSAGES, "max_tokens": 2, "temperature": 0}
    message = shared_server.post_ok(CHAT, body)["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None


STREAMS = [
    (CHAT, {"messages": MESSAGES}),
    (COMPLETIONS, {"prompt": "Once upon a time"}),
]


@pytest.mark.parametrize(("path", "request_body"), STREAMS)
def test_stream_without_include_usage_has_no_usage(
    shared_server: ServerProcess, path: str, request_body: dict[str, Any]
) -> None:
    body = request_body | {"max_tokens": 4, "temperature": 0, "stream": True}
    events = shared_server.stream_ok(path, body)
    assert len(events) >= 2
    assert [e for e in events if "usage" in e] == []
    assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("path", "request_body"), STREAMS)
def test_include_usage_puts_usage_on_the_final_empty_chunk_only(
    shared_server: ServerProcess, path: str, request_body: dict[str, Any]
) -> None:
    body = request_body | {
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = shared_server.stream_ok(path, body)
    *chunks, last = events
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 4
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 4
    assert chunks and all(c["usage"] is None and c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_summing_usage_over_a_stream_counts_each_token_once(shared_server: ServerProcess) -> None:
    """What LangChain does with the chunks: it added the finish chunk's usage to the last's."""
    stream = client(shared_server).chat.completions.create(
        model=served(shared_server),
        messages=MESSAGES,
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert sum(c.usage.completion_tokens for c in stream if c.usage is not None) == 5


def test_null_optional_fields_mean_unset(shared_server: ServerProcess) -> None:
    body = {
        "messages": MESSAGES,
        "max_tokens": 5,
        "max_completion_tokens": None,
        "n": None,
        "temperature": 0,
        "top_p": None,
        "seed": None,
        "stop": None,
        "stream": None,
        "stream_options": None,
        "logit_bias": None,
        "logprobs": None,
        "frequency_penalty": None,
        "presence_penalty": None,
        "tools": None,
        "tool_choice": None,
        "response_format": None,
        "user": None,
    }
    reply = shared_server.post_ok(CHAT, body)
    assert reply["usage"]["completion_tokens"] == 5
    assert reply["choices"][0]["finish_reason"] == "length"


def test_top_p_zero_is_greedy(shared_server: ServerProcess) -> None:
    api, model = client(shared_server), served(shared_server)
    greedy = api.completions.create(model=model, prompt="The fox", max_tokens=10, temperature=0)
    top_p_zero = api.completions.create(
        model=model, prompt="The fox", max_tokens=10, temperature=1.5, top_p=0, seed=3
    )
    assert top_p_zero.choices[0].text == greedy.choices[0].text


def test_405_says_which_methods_are_allowed(shared_server: ServerProcess) -> None:
    response = httpx.get(f"{shared_server.url}{CHAT}", timeout=30)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error"


OPENAI_CONTEXT_SENTENCE = "This model's maximum context length is 16 tokens."


def test_context_overflow_uses_openai_wording(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, "--max-context", "16")
    api, model = client(server), served(server)
    with pytest.raises(openai.APIStatusError) as chat:
        api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "word " * 40}], max_tokens=1
        )
    with pytest.raises(openai.APIStatusError) as completion:
        api.completions.create(model=model, prompt=[5] * 17, max_tokens=1)
    for caught, what in ((chat, "messages"), (completion, "prompt")):
        assert caught.value.status_code == 413
        error = caught.value.response.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == what
        assert error["message"].startswith(f"{OPENAI_CONTEXT_SENTENCE} However, your {what} ")
    assert completion.value.response.json()["error"]["message"] == (
        f"{OPENAI_CONTEXT_SENTENCE} However, your prompt resulted in 17 tokens. "
        "Please reduce the length of the prompt."
    )
