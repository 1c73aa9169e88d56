"""A real pretrained model served end to end: SmolLM2-135M-Instruct (byte-level BPE, ChatML
template, its own EOS), imported from its GGUF by `models import`, through a real `serve`.

The reference is mlx-lm itself, run in this process on the same folder and the same templated
prompt: at temperature 0 our server must produce the same tokens, stop where mlx-lm stops (the
model's own EOS), show none of the template's control tokens, and count what the tokenizer
counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.utils import load
from openai.types.chat import ChatCompletionMessageParam
from tokenizers import Tokenizer

from macprovider.actors.probe_prompt import build_probe_prompt, load_prompt_tokenizer
from tests.conftest import ServerProcess, StartServer, long_lived_server, model_variant
from tests.model_files import NEURAL_NETWORK, NEURAL_NETWORK_ANSWER

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": NEURAL_NETWORK}]
FIRST_WORDS = " ".join(NEURAL_NETWORK_ANSWER.split()[:12])
CONTROL_TEXT = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
MAX_TOKENS = 60


@dataclass(frozen=True)
class Reference:
    text: str
    prompt_tokens: int
    completion_tokens: int  # the EOS included, as the server counts it
    finish_reason: str


@pytest.fixture(scope="module")
def reference(smollm2_model: Path) -> Reference:
    """mlx-lm's own greedy answer for the question, with its chat template."""
    model, tokenizer = load(str(smollm2_model))
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    pieces = list(stream_generate(model, tokenizer, prompt, max_tokens=MAX_TOKENS))
    return Reference(
        text="".join(piece.text for piece in pieces),
        prompt_tokens=len(prompt),
        completion_tokens=pieces[-1].generation_tokens,
        finish_reason=str(pieces[-1].finish_reason),
    )


@pytest.fixture(scope="module")
def smollm2_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_model: Path
) -> Iterator[ServerProcess]:
    yield from long_lived_server(tmp_path_factory, "smollm2", smollm2_model, "--max-batch", "2")


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def ask(server: ServerProcess, model: str = "smollm2-135m", **extra: Any) -> Any:
    """The question at temperature 0; `model` is the served folder's name, which it answers to."""
    return client(server).chat.completions.create(
        model=model, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0, **extra
    )


def test_mlx_lm_itself_answers_the_known_sentence(reference: Reference) -> None:
    # The import is right (Q/K rows, tokenizer, template) only if the model says this.
    assert reference.text == NEURAL_NETWORK_ANSWER
    assert reference.finish_reason == "stop"


def test_chat_is_mlx_lm_token_for_token_and_ends_on_the_models_eos(
    smollm2_server: ServerProcess, reference: Reference
) -> None:
    reply = ask(smollm2_server)
    choice = reply.choices[0]
    assert choice.message.content == reference.text
    assert choice.finish_reason == "stop"
    assert not any(text in choice.message.content for text in CONTROL_TEXT)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == reference.prompt_tokens
    assert reply.usage.completion_tokens == reference.completion_tokens
    assert reply.usage.total_tokens == reference.prompt_tokens + reference.completion_tokens


def test_streamed_chat_is_the_same_text_with_no_control_token(
    smollm2_server: ServerProcess, reference: Reference
) -> None:
    chunks = list(ask(smollm2_server, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert "".join(deltas) == reference.text
    assert not any(text in delta for delta in deltas for text in CONTROL_TEXT)
    assert finishes[-1] == "stop" and set(finishes[:-1]) <= {None}
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        reference.prompt_tokens,
        reference.completion_tokens,
    )


def test_the_context_gate_counts_real_bpe_tokens(
    start_server: StartServer, smollm2_model: Path
) -> None:
    context = 48
    server = start_server(smollm2_model, "--max-context", str(context))
    tokenizer = load_prompt_tokenizer(smollm2_model)
    fits = build_probe_prompt(tokenizer.count, context)
    over = build_probe_prompt(tokenizer.count, context + 1)
    # Byte-level BPE: far more characters than tokens, so a character count would refuse it.
    assert len(fits.content) > context

    def send(content: str) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1}
        return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)

    accepted = send(fits.content)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["usage"]["prompt_tokens"] == context
    refused = send(over.content)
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "context_length_exceeded"


def test_an_8_bit_kv_cache_keeps_the_answer(start_server: StartServer, smollm2_model: Path) -> None:
    server = start_server(smollm2_model, "--kv-bits", "8")
    content = ask(server).choices[0].message.content
    assert content.startswith(FIRST_WORDS)


def test_the_lossless_q4_copy_answers_like_its_bf16_form(
    start_server: StartServer, smollm2_q4_model: Path
) -> None:
    server = start_server(smollm2_q4_model)
    reply = ask(server, smollm2_q4_model.name)
    assert reply.choices[0].message.content.startswith(FIRST_WORDS)
    assert reply.choices[0].finish_reason == "stop"


def test_every_eos_id_of_generation_config_stops_and_the_probe_knows_them_all(
    start_server: StartServer, smollm2_model: Path, tmp_path: Path
) -> None:
    """A model may name several end ids (`eos_token_id` as a list): each one stops, never
    shows, and autotune's stop-token leak check looks for every one of them."""
    period = Tokenizer.from_file(str(smollm2_model / "tokenizer.json")).token_to_id(".")
    assert period is not None
    config = {"bos_token_id": 1, "eos_token_id": [2, period]}
    variant = model_variant(
        smollm2_model, tmp_path / "two-eos", {"generation_config.json": json.dumps(config).encode()}
    )
    reply = ask(start_server(variant), variant.name)
    # The answer's one sentence ends on its full stop, which is now an end id: not shown.
    assert reply.choices[0].message.content == NEURAL_NETWORK_ANSWER.removesuffix(".")
    assert reply.choices[0].finish_reason == "stop"
    probe = load_prompt_tokenizer(variant)
    assert probe.stop_ids == tuple(sorted((2, period)))
    assert set(probe.stop_texts) == {"<|im_end|>", "."}
