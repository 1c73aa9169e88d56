"""Prompts of megabytes: refused by their size before tokenizing, and tokenized out of the
way of small requests, on a real `serve`."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import pytest
from mlx_lm.utils import load_tokenizer

from macprovider.server.provider import longest_token_bytes
from tests.conftest import StartServer, model_variant, wait_until

CONTEXT = 200_000
# The longest `tiny` token, "<|endoftext|>", is 13 bytes: text over 13 * CONTEXT bytes
# cannot fit, and below that only tokenizing tells.
LONGEST_TOKEN = 13
WORDS = "the king was a fox "  # six `tiny` tokens in 19 bytes


def text_of(nbytes: int) -> str:
    return (WORDS * (nbytes // len(WORDS) + 1))[:nbytes]


def test_large_prompts_hold_up_no_one(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, "--max-context", str(CONTEXT))
    within_bound = text_of(2_000_000)  # at least 153,847 tokens by its size; 631,580 in fact
    over_bound = text_of(LONGEST_TOKEN * CONTEXT + 1)
    large: dict[str, httpx.Response] = {}
    answered = threading.Event()

    def send_large() -> None:
        body = {"prompt": within_bound, "max_tokens": 1}
        large["reply"] = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        answered.set()

    sender = threading.Thread(target=send_large)
    sender.start()
    wait_until(lambda: "large-prompt lane" in server.log(), 60, "the large prompt's tokenizing")

    chat = {"messages": [{"role": "user", "content": over_bound}], "max_tokens": 1}
    refused = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=120)
    refused_first = not answered.is_set()
    small = httpx.post(
        f"{server.url}/v1/completions", json={"prompt": "The", "max_tokens": 2}, timeout=120
    )
    small_first = not answered.is_set()
    sender.join(timeout=120)

    assert refused.status_code == 413
    assert refused_first, "the over-bound prompt waited for the large one's tokenizing"
    assert small.status_code == 200
    assert small_first, "the small request waited for the large one's tokenizing"
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    size = re.fullmatch(
        rf"This model's maximum context length is {CONTEXT} tokens\. However, your messages "
        r"resulted in at least (\d+) tokens \((\d+) bytes of text, no token longer than "
        rf"{LONGEST_TOKEN} bytes\)\. Please reduce the length of the messages\.",
        error["message"],
    )
    assert size is not None, error["message"]
    assert int(size[2]) > len(over_bound) and int(size[1]) > CONTEXT  # the template's bytes too
    reply = large["reply"]
    assert reply.status_code == 413  # only tokenizing could tell
    assert reply.json()["error"]["message"].endswith(
        "your prompt resulted in 631580 tokens. Please reduce the length of the prompt."
    )


def test_the_longest_token_is_measured_with_special_tokens(tiny_model: Path) -> None:
    assert longest_token_bytes(load_tokenizer(tiny_model)) == LONGEST_TOKEN


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("normalizer", {"type": "NFC"}),  # composing characters shrinks the text
        ("pre_tokenizer", {"type": "WhitespaceSplit"}),  # whitespace is dropped
    ],
)
def test_no_bound_for_a_tokenizer_that_rewrites_text(
    tmp_path: Path, tiny_model: Path, field: str, value: dict[str, str]
) -> None:
    spec = json.loads((tiny_model / "tokenizer.json").read_text())
    spec[field] = value
    variant = model_variant(
        tiny_model, tmp_path / "variant", {"tokenizer.json": json.dumps(spec).encode()}
    )
    assert longest_token_bytes(load_tokenizer(variant)) is None
