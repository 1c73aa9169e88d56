"""A completion's text is the tokenizer's decode of the tokens it generated, streamed or not.

mlx-lm's byte-level detokenizer drops the first token's leading space (as mlx_lm.server
does), so "The three primary colours are" came back "the primary…" and read "arethe". The
reference here is mlx-lm's `stream_generate` on the same prompt ids at temperature 0: its
token ids, decoded by the tokenizer (its own `.text` is the trimmed one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.tokenizer_utils import load as load_tokenizer
from mlx_lm.utils import load

from macprovider.server.engine import fresh_detokenizer, text_detokenizer
from tests.conftest import ServerProcess, long_lived_server

PROMPT = "The three primary colours are"
MAX_TOKENS = 8  # the real model makes about 8 tokens a second on the test machine


def decoded_reference(model_path: Path, prompt: str) -> str:
    """The tokenizer's decode of mlx-lm's greedy tokens for `prompt`, its EOS left out."""
    model, tokenizer = load(str(model_path))
    ids = tokenizer.encode(prompt)  # as the server encodes a completion's prompt
    tokens = [r.token for r in stream_generate(model, tokenizer, ids, max_tokens=MAX_TOKENS)]
    if tokens and tokens[-1] in tokenizer.eos_token_ids:
        tokens.pop()
    text: str = tokenizer.decode(tokens)
    return text


@pytest.fixture(scope="module")
def smollm2_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_model: Path
) -> Iterator[ServerProcess]:
    yield from long_lived_server(tmp_path_factory, "fidelity", smollm2_model, "--max-batch", "2")


def complete(server: ServerProcess, **extra: Any) -> httpx.Response:
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)


def streamed_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    lines = [line.removeprefix("data: ") for line in response.text.splitlines()]
    chunks = [json.loads(line) for line in lines if line.startswith("{")]
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])


def both_texts(server: ServerProcess) -> tuple[str, str]:
    full = complete(server)
    assert full.status_code == 200, full.text
    return full.json()["choices"][0]["text"], streamed_text(complete(server, stream=True))


def test_the_real_models_completion_keeps_its_leading_space(
    smollm2_server: ServerProcess, smollm2_model: Path
) -> None:
    expected = decoded_reference(smollm2_model, PROMPT)
    # What made this visible: the first token is " the", so the text must start with a space.
    assert expected.startswith(" the")
    full, streamed = both_texts(smollm2_server)
    assert full == expected
    assert streamed == expected


def test_a_fixture_models_completion_is_its_decoded_tokens(
    shared_server: ServerProcess, small_model: Path
) -> None:
    expected = decoded_reference(small_model, PROMPT)
    assert expected.startswith(" ")  # its first token carries a space too
    full, streamed = both_texts(shared_server)
    assert full == expected
    assert streamed == expected


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_model: Path) -> Any:
    """mlx-lm's tokenizer wrapper for the real model, as the engine holds it."""
    return load_tokenizer(smollm2_model)


# Token pieces of the real model's vocabulary, as the byte-level BPE writes them ("Ġ" is a
# space), streamed one at a time: the text is always their decode.
DETOKENIZER_CASES = [
    ("a leading space is kept", ["Ġthe", "Ġprimary"]),
    ("no leading space", ["The", "Ġprimary"]),
    ("a lone space first, then a word", ["Ġ", "the"]),
    ("a newline first", ["Ċ", "Ġthe"]),
    ("two spaces first", ["ĠĠ", "the"]),
]


@pytest.mark.parametrize(
    "pieces", [c[1] for c in DETOKENIZER_CASES], ids=[c[0] for c in DETOKENIZER_CASES]
)
def test_the_streamed_text_is_the_tokenizers_decode(
    smollm2_tokenizer: Any, pieces: list[str]
) -> None:
    tokenizer = smollm2_tokenizer
    ids = tokenizer.convert_tokens_to_ids(pieces)
    assert None not in ids and tokenizer.unk_token_id not in ids
    detokenizer = fresh_detokenizer(text_detokenizer(tokenizer))
    segments = []
    for token in ids:
        detokenizer.add_token(token)
        segments.append(detokenizer.last_segment)
    detokenizer.finalize()
    segments.append(detokenizer.last_segment)
    assert "".join(segments) == tokenizer.decode(ids)
