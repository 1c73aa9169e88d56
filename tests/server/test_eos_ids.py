"""Every end-of-sequence id a model folder names stops generation, and the probe's stop-token
leak check looks for each of them: generation_config.json may list several."""

from __future__ import annotations

import json
import queue
import shutil
from pathlib import Path

import pytest

from macprovider.actors.probe_prompt import load_prompt_tokenizer
from macprovider.server.engine import Engine, Event, Job, JobFinished
from macprovider.server.metrics import Metrics

PROMPT = [1, 17, 230, 911, 42]
MAX_TOKENS = 12
TIMEOUT_S = 60
UNUSED_ID = 7  # never generated after PROMPT (checked below)


@pytest.fixture(scope="module")
def greedy(tiny_model: Path) -> list[int]:
    """The tokens the tiny fixture generates after PROMPT at temperature 0, eos ignored."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load

    model, _ = load(str(tiny_model))
    return [int(t) for t, _ in generate_step(mx.array(PROMPT), model, max_tokens=MAX_TOKENS)]


def with_generation_config(tiny_model: Path, folder: Path, eos: list[int] | None) -> Path:
    shutil.copytree(tiny_model, folder)
    if eos is not None:
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return folder


def generate(folder: Path) -> JobFinished:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def emit(batch: list[Event]) -> None:
        for event in batch:
            events.put(event)

    engine = Engine(folder, max_batch=1, kv_bits=None, metrics=Metrics(), emit=emit)
    engine.start()
    try:
        assert engine.ready.wait(TIMEOUT_S) and engine.load_error is None
        engine.submit(Job(1, PROMPT, MAX_TOKENS))
        while not isinstance(event := events.get(timeout=TIMEOUT_S), JobFinished):
            pass
        return event
    finally:
        assert engine.stop(TIMEOUT_S)


@pytest.mark.parametrize("position", [0, 1], ids=["listed first", "listed second"])
def test_generation_stops_at_either_eos_id_generation_config_lists(
    tiny_model: Path, tmp_path: Path, greedy: list[int], position: int
) -> None:
    assert UNUSED_ID not in greedy and 2 not in greedy  # else the setup proves nothing
    eos = [UNUSED_ID, UNUSED_ID]
    eos[position] = greedy[0]  # the first token generated, so generation ends at once
    finished = generate(with_generation_config(tiny_model, tmp_path / "model", eos))
    assert (finished.finish_reason, finished.completion_tokens) == ("stop", 1)


def test_without_a_generation_config_the_same_prompt_runs_to_its_length(
    tiny_model: Path, tmp_path: Path
) -> None:
    finished = generate(with_generation_config(tiny_model, tmp_path / "model", None))
    assert (finished.finish_reason, finished.completion_tokens) == ("length", MAX_TOKENS)


def test_the_probe_looks_for_the_second_eos_ids_text_and_bans_it(
    tiny_model: Path, tmp_path: Path, greedy: list[int]
) -> None:
    second = greedy[0]
    folder = with_generation_config(tiny_model, tmp_path / "model", [2, second])
    tokenizer = load_prompt_tokenizer(folder)
    assert second in tokenizer.stop_ids  # banned through logit_bias in Stage 2
    from mlx_lm.tokenizer_utils import load

    text = load(folder).convert_ids_to_tokens(second)
    assert text in tokenizer.stop_texts
    # The leak check (`actors.probe`) flags any stop text in a stream's content.
    assert any(stop in f"fine{text}" for stop in tokenizer.stop_texts)
