"""Presence, frequency and repetition penalties per request, through a real server.

The reference is mlx-lm's own `make_logits_processors` run by `stream_generate` on the
same prompt ids, greedy. Two windows differ from mlx-lm's defaults on purpose: OpenAI's
presence and frequency penalties count the tokens generated so far (mlx-lm's count the
last 20 of prompt and output), and the repetition penalty covers the whole context (the
CTRL rule; mlx-lm's looks at the last 20). So the reference gets an unbounded window and
sees only the generated tokens for the two OpenAI penalties.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import mlx.core as mx
import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_logits_processors
from mlx_lm.utils import load

from tests.conftest import ServerProcess

# On the `small` fixture these ids continue greedily with one token over and over.
REPEATING_PROMPT = [5, 6, 7, 8]
UNBOUNDED = 10**6
TOKENS = 12


@pytest.fixture(scope="module")
def model(small_model: Path) -> tuple[Any, Any]:
    net, tokenizer = load(str(small_model))
    return net, tokenizer


def reference_processors(prompt: list[int], penalties: dict[str, float]) -> list[Any]:
    """mlx-lm's processors for `penalties`, with the windows described above."""
    processors: list[Any] = make_logits_processors(
        repetition_penalty=penalties.get("repetition_penalty"),
        repetition_context_size=UNBOUNDED,
    )
    openai_penalties = make_logits_processors(
        presence_penalty=penalties.get("presence_penalty"),
        presence_context_size=UNBOUNDED,
        frequency_penalty=penalties.get("frequency_penalty"),
        frequency_context_size=UNBOUNDED,
    )
    for processor in openai_penalties:
        # mlx-lm hands its processors the prompt and the output; OpenAI counts the output.
        processors.append(lambda tokens, logits, p=processor: p(tokens[len(prompt) :], logits))
    return processors


def reference_text(model: tuple[Any, Any], prompt: list[int], penalties: dict[str, float]) -> str:
    net, tokenizer = model
    processors = reference_processors(prompt, penalties)
    tokens = [
        r.token
        for r in stream_generate(
            net, tokenizer, mx.array(prompt), max_tokens=TOKENS, logits_processors=processors
        )
    ]
    assert len(tokens) == TOKENS, "the reference stopped early; pick a prompt that runs on"
    return str(tokenizer.decode(tokens))


def complete(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    body = {"prompt": REPEATING_PROMPT, "max_tokens": TOKENS, "temperature": 0} | fields
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def test_a_large_frequency_penalty_stops_a_repeated_token(shared_server: ServerProcess) -> None:
    plain = complete(shared_server, logprobs=0)["choices"][0]["logprobs"]["tokens"]
    assert len(set(plain)) == 1, f"the premise: greedy repeats one token, got {plain}"
    penalised = complete(shared_server, logprobs=0, frequency_penalty=2)
    counts = Counter(penalised["choices"][0]["logprobs"]["tokens"])
    assert counts.most_common(1)[0][1] <= 2, counts


PENALTIES = [
    {},
    {"repetition_penalty": 1.3},
    {"repetition_penalty": 0.8},  # below 1 favours repeats, as mlx-lm's does
    {"presence_penalty": 1.5},
    {"frequency_penalty": 0.7},
    {"presence_penalty": -0.5, "frequency_penalty": 1.2, "repetition_penalty": 1.1},
]


def test_each_stream_in_a_batch_matches_mlx_lms_penalties(
    shared_server: ServerProcess, model: tuple[Any, Any]
) -> None:
    # All at once, so they share decode batches, each with its own penalties.
    with ThreadPoolExecutor(len(PENALTIES)) as pool:
        replies = list(pool.map(lambda p: complete(shared_server, **p), PENALTIES))
    texts = [r["choices"][0]["text"] for r in replies]
    expected = [reference_text(model, REPEATING_PROMPT, p) for p in PENALTIES]
    assert texts == expected
    assert len(set(texts)) > 3, "the penalties should change the output"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
    ],
)
def test_the_chat_and_completions_endpoints_both_take_penalties(
    shared_server: ServerProcess, path: str, body: dict[str, Any]
) -> None:
    fields = {"presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2}
    response = httpx.post(
        f"{shared_server.url}{path}", json=body | fields | {"max_tokens": 3}, timeout=60
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("field", "value"),
    [("presence_penalty", 2.5), ("frequency_penalty", -2.01), ("repetition_penalty", 0)],
)
def test_a_penalty_out_of_range_is_a_400_naming_it(
    shared_server: ServerProcess, field: str, value: float
) -> None:
    body = {"prompt": "hi", "max_tokens": 2, field: value}
    response = httpx.post(f"{shared_server.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
