"""The OpenAI surface of a real `serve` process, through the official `openai` client and httpx."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from mlx_lm.utils import load
from openai.types.chat import ChatCompletionMessageParam

from macprovider.server.batch_generator import BatchStepGenerator
from macprovider.server.batch_sampling import SamplingParams
from tests.conftest import ServerProcess, StartServer, model_variant

CHAT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a story about a fox."}
]


def client(server: ServerProcess, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_models_lists_the_served_model(shared_server: ServerProcess, small_model: Path) -> None:
    models = client(shared_server).models.list()
    assert [m.id for m in models.data] == [str(small_model)]


def test_chat_non_stream_fills_usage_and_stops_on_length(shared_server: ServerProcess) -> None:
    reply = client(shared_server).chat.completions.create(
        model=str(shared_server_model(shared_server)), messages=CHAT, max_tokens=7, temperature=0
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def shared_server_model(server: ServerProcess) -> str:
    return str(httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"])


def test_chat_stream_matches_non_stream_text(shared_server: ServerProcess) -> None:
    api = client(shared_server)
    model = shared_server_model(shared_server)
    full = api.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0)
    stream = api.chat.completions.create(
        model=model,
        messages=CHAT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text == full.choices[0].message.content
    assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_completions_stream_and_non_stream(shared_server: ServerProcess) -> None:
    api = client(shared_server)
    model = shared_server_model(shared_server)
    full = api.completions.create(
        model=model, prompt="Once upon a time", max_tokens=9, temperature=0
    )
    assert full.choices[0].finish_reason == "length"
    assert full.usage is not None and full.usage.completion_tokens == 9
    stream = api.completions.create(
        model=model, prompt="Once upon a time", max_tokens=9, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == full.choices[0].text


def test_raw_sse_framing_ends_with_done(shared_server: ServerProcess) -> None:
    body = {"prompt": "The king", "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{shared_server.url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[0].startswith(":")  # a comment that sends the headers before any token
    lines = lines[1:]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    # Not asked for with `stream_options.include_usage`, so no chunk has usage.
    assert all("usage" not in e for e in events)


def test_seed_makes_sampling_reproducible(shared_server: ServerProcess) -> None:
    api = client(shared_server)
    model = shared_server_model(shared_server)

    def sample(seed: int) -> str:
        reply = api.completions.create(
            model=model, prompt="The", max_tokens=24, temperature=2.0, seed=seed
        )
        return reply.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_top_p_near_zero_is_greedy(shared_server: ServerProcess) -> None:
    api = client(shared_server)
    model = shared_server_model(shared_server)
    greedy = api.completions.create(model=model, prompt="The fox", max_tokens=10, temperature=0)
    nucleus = api.completions.create(
        model=model, prompt="The fox", max_tokens=10, temperature=1.5, top_p=1e-6, seed=3
    )
    assert nucleus.choices[0].text == greedy.choices[0].text


def test_stop_string_truncates_and_reports_stop(shared_server: ServerProcess) -> None:
    api = client(shared_server)
    model = shared_server_model(shared_server)

    # Seeded sampling: reproducible, and more varied than a tiny model's greedy output.
    def sample(stop: list[str] | None) -> openai.types.Completion:
        return api.completions.create(
            model=model, prompt="The fox", max_tokens=24, temperature=1.0, seed=11, stop=stop
        )

    text = sample(None).choices[0].text
    cut = text[len(text) // 2 :].strip()[:2]
    assert cut, f"need some generated text to pick a stop string from: {text!r}"
    stopped = sample([cut])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(cut)]


SEED = 5


def sampled_tokens(model_dir: Path, prompt: list[int], count: int) -> list[int]:
    """The tokens the server samples for `prompt` at temperature 1 with SEED.

    Built exactly as the engine builds a request (same generator, same sampler), so the
    server process draws the same tokens.
    """
    model, tokenizer = load(str(model_dir))
    generator = BatchStepGenerator(
        model,
        stop_tokens=[[t] for t in sorted(tokenizer.eos_token_ids)],
        completion_batch_size=1,
        prefill_batch_size=1,
    )
    generator.insert(
        [prompt], max_tokens=[count], samplers=[SamplingParams(temperature=1.0, seed=SEED)]
    )
    tokens: list[int] = []
    while len(tokens) < count:
        tokens += [r.token for r in generator.next_generated()]
    return tokens


@pytest.fixture(scope="module")
def eos_mid_reply(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A copy of `tiny` whose EOS set also holds a token the server will sample mid-reply.

    A tiny model reaches its real `<|im_end|>` unpredictably, so the test makes a token it
    surely reaches an EOS token: same weights, same loader, same serving code path. The
    copy carries `expected.json`: the text before that token and the tokens generated.
    """
    tokens = sampled_tokens(tiny_model, PROMPT_IDS, 12)
    fresh = [i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i]]
    assert fresh, f"sampling repeats one token: {tokens}; pick another seed"
    stop_at = fresh[0]
    config = json.loads((tiny_model / "config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], tokens[stop_at]]
    copy = model_variant(
        tiny_model,
        tmp_path_factory.mktemp("eos") / "tiny-eos",
        {"config.json": json.dumps(config).encode()},
    )
    _, tokenizer = load(str(tiny_model))
    # The text is the tokenizer's decode of the tokens, its first one's leading space kept.
    text = tokenizer.decode(tokens[:stop_at])
    expected = {"text": text, "completion_tokens": stop_at + 1}
    (copy / "expected.json").write_text(json.dumps(expected))
    return copy


PROMPT_IDS = [5, 9, 14, 27, 33]


def test_stop_token_ends_generation_and_never_appears(
    start_server: StartServer, eos_mid_reply: Path
) -> None:
    expected = json.loads((eos_mid_reply / "expected.json").read_text())
    server = start_server(eos_mid_reply)
    api = client(server)
    reply = api.completions.create(
        model=str(eos_mid_reply), prompt=PROMPT_IDS, max_tokens=20, temperature=1.0, seed=SEED
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].text == expected["text"]
    assert reply.usage is not None
    assert reply.usage.completion_tokens == expected["completion_tokens"]
    stream = api.completions.create(
        model=str(eos_mid_reply),
        prompt=PROMPT_IDS,
        max_tokens=20,
        temperature=1.0,
        seed=SEED,
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected["text"]
    assert chunks[-1].choices[0].finish_reason == "stop"
