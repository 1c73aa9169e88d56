"""Logprobs in OpenAI's shapes, through a real server, against mlx-lm's own.

mlx-lm's `stream_generate` yields the log-softmax over the vocabulary for each token;
greedy on the same prompt ids, the server's values and best tokens must be the same.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import mlx.core as mx
import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.utils import load

from tests.conftest import ServerProcess
from tests.server.test_penalties import reference_processors

PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]
TOKENS = 8
CLOSE = 1e-4


@pytest.fixture(scope="module")
def model(small_model: Path) -> tuple[Any, Any]:
    net, tokenizer = load(str(small_model))
    return net, tokenizer


Step = tuple[str, float, list[tuple[str, float]]]  # token, logprob, best first


def reference(
    model: tuple[Any, Any], prompt: list[int], top: int, penalties: dict[str, float] | None = None
) -> list[Step]:
    net, tokenizer = model

    def spell(token: int) -> str:
        return str(tokenizer.decode([token]))

    steps = []
    processors = reference_processors(prompt, penalties or {})
    for r in stream_generate(
        net, tokenizer, mx.array(prompt), max_tokens=TOKENS, logits_processors=processors
    ):
        values = r.logprobs.tolist()
        best = sorted(range(len(values)), key=lambda t: -values[t])[:top]
        steps.append((spell(r.token), values[r.token], [(spell(t), values[t]) for t in best]))
    assert len(steps) == TOKENS, "the reference stopped early; pick a prompt that runs on"
    return steps


def close(a: float, b: float) -> bool:
    return abs(a - b) <= CLOSE


def check_chat(content: list[dict[str, Any]], expected: list[Step]) -> None:
    assert len(content) == len(expected)
    for entry, (token, logprob, best) in zip(content, expected, strict=True):
        assert entry["token"] == token
        assert entry["bytes"] == list(token.encode())
        assert close(entry["logprob"], logprob)
        assert [t["token"] for t in entry["top_logprobs"]] == [t for t, _ in best]
        for alternative, (_, value) in zip(entry["top_logprobs"], best, strict=True):
            assert close(alternative["logprob"], value)
            assert alternative["bytes"] == list(alternative["token"].encode())


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0} | fields


def test_chat_logprobs_equal_mlx_lms(shared_server: ServerProcess, model: tuple[Any, Any]) -> None:
    prompt = model[1].apply_chat_template(MESSAGES, add_generation_prompt=True)
    reply = shared_server.post_ok("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=20))
    assert reply["usage"]["prompt_tokens"] == len(prompt), "the premise: the same prompt ids"
    logprobs = reply["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    check_chat(logprobs["content"], reference(model, prompt, 20))


def test_chat_logprobs_alone_are_the_chosen_tokens(shared_server: ServerProcess) -> None:
    reply = shared_server.post_ok("/v1/chat/completions", chat_body(logprobs=True))
    content = reply["choices"][0]["logprobs"]["content"]
    assert len(content) == TOKENS
    assert all(entry["top_logprobs"] == [] for entry in content)


# Logprobs are of the distribution the token was drawn from: after the penalties.
@pytest.mark.parametrize(
    "penalties",
    [{}, {"frequency_penalty": 1.5, "repetition_penalty": 1.2}],
    ids=["plain", "penalised"],
)
def test_completion_logprobs_equal_mlx_lms(
    shared_server: ServerProcess, model: tuple[Any, Any], penalties: dict[str, float]
) -> None:
    body = {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "logprobs": 5} | penalties
    logprobs = shared_server.post_ok("/v1/completions", body)["choices"][0]["logprobs"]
    expected = reference(model, PROMPT, 5, penalties)
    assert logprobs["tokens"] == [token for token, _, _ in expected]
    for got, (_, value, _) in zip(logprobs["token_logprobs"], expected, strict=True):
        assert close(got, value)
    for top, (token, _, best) in zip(logprobs["top_logprobs"], expected, strict=True):
        # The best five, and the chosen token beside them (greedy: it is among them).
        assert list(top) == [t for t, _ in best] and token in top
        assert all(close(top[t], v) for t, v in best)
    lengths = [len(token) for token in logprobs["tokens"]]
    assert logprobs["text_offset"] == [sum(lengths[:i]) for i in range(len(lengths))]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=2)),
        (
            "/v1/completions",
            {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "logprobs": 2},
        ),
    ],
)
def test_each_streamed_chunk_carries_its_own_tokens_logprobs(
    shared_server: ServerProcess, path: str, body: dict[str, Any]
) -> None:
    whole = shared_server.post_ok(path, body)["choices"][0]["logprobs"]
    chunks = [c["choices"][0] for c in shared_server.stream_ok(path, body | {"stream": True})]
    chat = "messages" in body
    parts = [c["logprobs"] for c in chunks if c["logprobs"] is not None]
    if chat:
        texts = [c["delta"].get("content", "") for c in chunks if c["logprobs"] is not None]
        tokens = [[e["token"] for e in p["content"]] for p in parts]
        assert [e for p in parts for e in p["content"]] == whole["content"]
    else:
        texts = [c["text"] for c in chunks if c["logprobs"] is not None]
        tokens = [p["tokens"] for p in parts]
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            assert [v for p in parts for v in p[key]] == whole[key], key
    # A chunk's text is its own tokens' (the detokenizer drops the completion's leading
    # space, which the first token keeps); every chunk with text has logprobs.
    joined = ["".join(t) for t in tokens]
    assert joined[0].endswith(texts[0]) and joined[1:] == texts[1:]
    shown = [c for c in chunks if c.get("text") or c.get("delta", {}).get("content")]
    assert all(c["logprobs"] is not None for c in shown)


def test_a_request_without_logprobs_gets_none_beside_one_with(
    shared_server: ServerProcess,
) -> None:
    bodies = [chat_body(logprobs=True, top_logprobs=3), chat_body(), chat_body(logprobs=False)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: shared_server.post_ok("/v1/chat/completions", b), bodies))
    asked, plain, declined = (r["choices"][0] for r in replies)
    assert len(asked["logprobs"]["content"]) == TOKENS
    assert plain["logprobs"] is None and declined["logprobs"] is None
    assert asked["message"]["content"] == plain["message"]["content"]


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": 3}, "logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ],
)
def test_logprobs_out_of_range_is_a_400_naming_the_field(
    shared_server: ServerProcess, path: str, fields: dict[str, Any], param: str
) -> None:
    body = chat_body() if "chat" in path else {"prompt": "hi", "max_tokens": 2}
    response = httpx.post(f"{shared_server.url}{path}", json=body | fields, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
