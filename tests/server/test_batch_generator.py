"""The engine's generator on a fixture model: greedy output token-identical to mlx-lm's
per-request sampler and processors, seeded output independent of the batch, logprobs.

Greedy requests must decode exactly as before the whole-batch step; a sampled request
cannot match mlx-lm's draws sample for sample (see `batch_sampling`), so here it only
has to be reproducible whoever shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import (
    make_frequency_penalty,
    make_presence_penalty,
    make_repetition_penalty,
)
from mlx_lm.utils import load

from macprovider.server.batch_generator import BatchStepGenerator
from macprovider.server.batch_sampling import SamplingParams, TokenLogprobs

PROMPTS = [[5, 9, 14, 27, 33], [1, 2, 3], [7, 7, 7, 7, 7, 7, 7, 7], list(range(40, 70))]
NEW_TOKENS = 16
ALL_TOKENS = 10**6  # a context window past any test's length: the penalties see everything

Processor = Any


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Any:
    return load(str(tiny_model))[0]


def decode(
    generator: BatchGenerator, prompts: Sequence[list[int]], **per_row: Any
) -> list[list[Any]]:
    """Every row's responses, in prompt order, each row run to NEW_TOKENS; rows inserted
    before are stepped along but not collected."""
    uids = generator.insert(list(prompts), max_tokens=[NEW_TOKENS] * len(prompts), **per_row)
    out: dict[int, list[Any]] = {uid: [] for uid in uids}
    while any(len(r) < NEW_TOKENS for r in out.values()):
        for response in generator.next_generated():
            if response.uid in out:
                out[response.uid].append(response)
    return [out[uid] for uid in uids]


def per_request_processors(params: SamplingParams, prompt_length: int) -> list[Processor]:
    """mlx-lm's processors for one request, as our step defines the penalties: presence
    and frequency over the generated tokens, repetition over the prompt too."""
    processors: list[Processor] = []
    if params.logit_bias:
        ids = mx.array([t for t, _ in params.logit_bias])
        values = mx.array([v for _, v in params.logit_bias])
        processors.append(lambda _, logits: logits.at[:, ids].add(values))
    if params.repetition_penalty != 1.0:
        processors.append(make_repetition_penalty(params.repetition_penalty, ALL_TOKENS))
    for make, penalty in (
        (make_presence_penalty, params.presence_penalty),
        (make_frequency_penalty, params.frequency_penalty),
    ):
        if penalty:
            generated = make(penalty, ALL_TOKENS)
            processors.append(lambda ctx, logits, f=generated: f(ctx[prompt_length:], logits))
    return processors


def reference(model: Any, prompt: list[int], params: SamplingParams) -> list[int]:
    """The request alone through mlx-lm's own per-request path (greedy sampler)."""
    generator = BatchGenerator(model, completion_batch_size=1, prefill_batch_size=1)
    (responses,) = decode(
        generator, [prompt], logits_processors=[per_request_processors(params, len(prompt))]
    )
    return [r.token for r in responses]


GREEDY = [
    SamplingParams(),
    SamplingParams(logit_bias=((262, -100.0), (14, 3.0))),
    SamplingParams(presence_penalty=1.0),
    SamplingParams(frequency_penalty=0.8),
    SamplingParams(repetition_penalty=1.5),
    SamplingParams(logit_bias=((262, -100.0),), frequency_penalty=0.5, repetition_penalty=1.2),
]


@pytest.mark.parametrize("params", GREEDY, ids=repr)
def test_greedy_rows_decode_as_the_request_alone_in_mlx_lm(
    model: Any, params: SamplingParams
) -> None:
    # Each row shares the batch with sampled rows and rows asking for other processing.
    neighbours = [SamplingParams(temperature=0.8, seed=3), SamplingParams(presence_penalty=2.0)]
    batch = [params, neighbours[0], params, neighbours[1]]
    generator = BatchStepGenerator(model, completion_batch_size=4, prefill_batch_size=4)
    rows = decode(generator, PROMPTS, samplers=batch)
    for i in (0, 2):
        assert [r.token for r in rows[i]] == reference(model, PROMPTS[i], params), f"row {i}"


def test_plain_greedy_batch_matches_mlx_lm_batch(model: Any) -> None:
    ours = decode(BatchStepGenerator(model, completion_batch_size=4), PROMPTS)
    theirs = decode(BatchGenerator(model, completion_batch_size=4), PROMPTS)
    assert [[r.token for r in row] for row in ours] == [[r.token for r in row] for row in theirs]


def test_a_seeded_row_is_the_same_alone_and_in_a_batch_joined_later(model: Any) -> None:
    mine = SamplingParams(temperature=1.0, top_p=0.9, seed=17)
    (alone,) = decode(BatchStepGenerator(model), PROMPTS[:1], samplers=[mine])
    generator = BatchStepGenerator(model, completion_batch_size=4, prefill_batch_size=1)
    others = [SamplingParams(temperature=0.5, seed=1), SamplingParams(logit_bias=((5, 2.0),))]
    generator.insert(PROMPTS[1:3], max_tokens=[NEW_TOKENS * 2] * 2, samplers=others)
    for _ in range(3):  # the other rows are decoding when this one joins
        generator.next()
    (crowded,) = decode(generator, PROMPTS[:1], samplers=[mine])
    assert [r.token for r in crowded] == [r.token for r in alone]


def test_logprobs_come_with_the_rows_that_asked(model: Any) -> None:
    batch = [SamplingParams(top_logprobs=2), SamplingParams(temperature=1.0, seed=2)]
    asked, silent = decode(BatchStepGenerator(model), PROMPTS[:2], samplers=batch)
    assert all(r.logprobs is None for r in silent)
    for response in asked:
        assert isinstance(response.logprobs, TokenLogprobs)
        (best, _), second = response.logprobs.top  # greedy: the chosen token is the best
        assert best == response.token
        assert response.logprobs.logprob == pytest.approx(response.logprobs.top[0][1])
        assert second[1] <= response.logprobs.logprob
