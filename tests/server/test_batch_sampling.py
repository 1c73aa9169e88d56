"""The whole-batch sampling step against mlx-lm's per-request filters and processors.

Each row of a table is one request's parameters; the step runs them all in one batch
on fixed logits and must give each row what mlx-lm's per-request code gives it alone.
Sampled draws cannot match mlx-lm's sample for sample (see `batch_sampling`'s docstring:
MLX's categorical has no per-row-key batch form), so they are checked statistically
against the exact distribution the filters leave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

import mlx.core as mx
import pytest
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_frequency_penalty,
    make_presence_penalty,
    make_repetition_penalty,
)

from macprovider.server.batch_sampling import TOP_LOGPROBS, BatchRows, SamplingParams

VOCAB = 12
LOGITS = mx.array([[0.3 * ((7 * i + 3 * r) % VOCAB) - 1.0 for i in range(VOCAB)] for r in range(4)])
PROMPTS = [[1, 2, 2], [3], [4, 5], [6, 6, 7]]
# Each row's tokens generated so far, fed through the step one by one.
GENERATED = [[0, 0, 5], [8], [9, 9, 9], []]
NO_CONTEXT: list[list[int]] = []


def ints(a: mx.array) -> list[int]:
    return cast(list[int], a.tolist())


def floats(a: mx.array) -> list[float]:
    return cast(list[float], a.tolist())


def normalized(logits: mx.array) -> mx.array:
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def rows_after(params: list[SamplingParams], generated: list[list[int]]) -> BatchRows:
    """A batch whose rows' counts hold `generated`, as after that many steps."""
    rows = BatchRows.admit(params, PROMPTS[: len(params)], VOCAB)
    if rows.counts is not None:
        rows.counts = rows.counts + mx.array(
            [[float(g.count(t)) for t in range(VOCAB)] for g in generated]
        )
    return rows


def reference_logits(params: SamplingParams, row: int) -> mx.array:
    """mlx-lm's per-request processors on one row, in their order; presence and
    frequency see the generated tokens only, repetition the prompt too."""
    logits = LOGITS[row : row + 1]
    for token, value in params.logit_bias:
        logits = logits.at[:, token].add(value)
    everything = mx.array(PROMPTS[row] + GENERATED[row])
    generated = mx.array(GENERATED[row], dtype=mx.int32)
    if params.repetition_penalty != 1.0:
        logits = make_repetition_penalty(params.repetition_penalty, 10**6)(everything, logits)
    if params.presence_penalty:
        logits = make_presence_penalty(params.presence_penalty, 10**6)(generated, logits)
    if params.frequency_penalty:
        logits = make_frequency_penalty(params.frequency_penalty, 10**6)(generated, logits)
    return logits


PROCESSING = [
    SamplingParams(),
    SamplingParams(logit_bias=((3, -100.0), (4, 2.5))),
    SamplingParams(presence_penalty=1.5),
    SamplingParams(frequency_penalty=0.7),
    SamplingParams(repetition_penalty=1.3),
    SamplingParams(logit_bias=((0, 1.0),), presence_penalty=0.5, frequency_penalty=0.5),
]


@pytest.mark.parametrize("params", PROCESSING, ids=repr)
def test_processing_matches_the_per_request_processors(params: SamplingParams) -> None:
    # The row under test shares the batch with rows asking for other things.
    others = [SamplingParams(), SamplingParams(frequency_penalty=2.0), SamplingParams()]
    for row in range(4):
        batch = [*others[:row], params, *others[row:]]
        rows = rows_after(batch, GENERATED)
        processed = rows._process(LOGITS, lambda: NO_CONTEXT)
        assert mx.allclose(processed[row], reference_logits(params, row)[0]).item()


def test_greedy_is_the_argmax_of_the_processed_logits() -> None:
    rows = rows_after(PROCESSING[:4], GENERATED)
    tokens, logprobs = rows.step(LOGITS, lambda: NO_CONTEXT)
    expected = [mx.argmax(reference_logits(p, r)).item() for r, p in enumerate(PROCESSING[:4])]
    assert tokens.tolist() == expected
    assert logprobs is None


FILTERS = [
    ("top_p", SamplingParams(temperature=1.0, top_p=0.6), lambda lp: apply_top_p(lp, 0.6)),
    ("min_p", SamplingParams(temperature=1.0, min_p=0.3), lambda lp: apply_min_p(lp, 0.3)),
    ("top_k", SamplingParams(temperature=1.0, top_k=3), lambda lp: apply_top_k(lp, 3)),
]


@pytest.mark.parametrize(("name", "params", "reference"), FILTERS, ids=[f[0] for f in FILTERS])
def test_filters_keep_what_mlx_lm_keeps(
    name: str, params: SamplingParams, reference: Callable[[mx.array], mx.array]
) -> None:
    batch = [SamplingParams(temperature=0.5), params, SamplingParams(), params]
    logprobs = normalized(LOGITS)
    kept = BatchRows.admit(batch, PROMPTS, VOCAB)._filter(logprobs)
    for row in (1, 3):
        expected = reference(logprobs[row : row + 1])[0]
        assert mx.array_equal(mx.isinf(kept[row]), mx.isinf(expected)).item(), name
    for row in (0, 2):
        assert not mx.isinf(kept[row]).any().item()


def draws(params: SamplingParams, n: int) -> list[int]:
    """`n` first draws of rows that differ only in their seed, in one batch."""
    batch = [replace(params, seed=s) for s in range(n)]
    rows = BatchRows.admit(batch, [[0]] * n, VOCAB)
    logits = mx.broadcast_to(LOGITS[:1], (n, VOCAB))
    tokens, _ = rows.step(logits, lambda: NO_CONTEXT)
    return ints(tokens)


DISTRIBUTIONS = [
    ("plain", SamplingParams(temperature=1.0), lambda lp: lp),
    ("hot", SamplingParams(temperature=2.0), lambda lp: lp / 2.0),
    ("top_p", SamplingParams(temperature=0.7, top_p=0.8), lambda lp: apply_top_p(lp, 0.8) / 0.7),
    ("top_k", SamplingParams(temperature=1.0, top_k=4), lambda lp: apply_top_k(lp, 4)),
]


@pytest.mark.parametrize(
    ("name", "params", "expected_logits"), DISTRIBUTIONS, ids=[d[0] for d in DISTRIBUTIONS]
)
def test_samples_follow_the_per_request_distribution(
    name: str, params: SamplingParams, expected_logits: Callable[[mx.array], mx.array]
) -> None:
    """Pearson's chi-square over 6,000 seeds, against the probabilities mlx-lm's sampler
    draws from; the bound is the 99.99th percentile for 11 degrees of freedom."""
    n = 6000
    expected = floats(mx.softmax(expected_logits(normalized(LOGITS[:1]))[0]))
    seen = draws(params, n)
    chi2 = 0.0
    for token, p in enumerate(expected):
        observed = seen.count(token)
        if p == 0:
            assert observed == 0, f"{name}: token {token} is filtered out but was drawn"
        else:
            chi2 += (observed - n * p) ** 2 / (n * p)
    assert chi2 < 37.0, f"{name}: chi-square {chi2:.1f}"


def test_a_seed_draws_the_same_tokens_whatever_shares_the_batch() -> None:
    mine = SamplingParams(temperature=1.0, seed=42, top_p=0.9)
    alone = BatchRows.admit([mine], [[0]], VOCAB)
    crowded = BatchRows.admit(
        [SamplingParams(temperature=0.3, seed=1), SamplingParams(), mine], [[0]] * 3, VOCAB
    )
    for _ in range(5):
        lone, _ = alone.step(LOGITS[2:3], lambda: NO_CONTEXT)
        many, _ = crowded.step(LOGITS[:3], lambda: NO_CONTEXT)
        assert lone.item() == many[2].item()


def test_masks_forbid_tokens_in_one_step() -> None:
    allowed = mx.array([t % 3 == 0 for t in range(VOCAB)])
    contexts_seen: list[list[int]] = []

    def mask(tokens: Sequence[int]) -> mx.array:
        contexts_seen.append(list(tokens))
        return allowed

    batch = [
        SamplingParams(mask=mask),
        SamplingParams(),
        SamplingParams(temperature=1.0, mask=mask),
    ]
    rows = BatchRows.admit(batch, [[0]] * 3, VOCAB)
    step, _ = rows.step(LOGITS[:3], lambda: [[1], [2], [3]])
    tokens = ints(step)
    assert tokens[0] % 3 == 0 and tokens[2] % 3 == 0
    assert tokens[1] == mx.argmax(LOGITS[1]).item()
    assert contexts_seen == [[1], [3]]
    assert tokens[0] == mx.argmax(mx.where(allowed, LOGITS[0], -float("inf"))).item()


def test_logprobs_for_the_rows_that_asked() -> None:
    batch = [SamplingParams(top_logprobs=3), SamplingParams(), SamplingParams(top_logprobs=0)]
    rows = BatchRows.admit(batch, [[0]] * 3, VOCAB)
    tokens, step = rows.step(LOGITS[:3], lambda: NO_CONTEXT)
    assert step is not None
    first, none, chosen_only = step.per_row([p.top_logprobs for p in batch])
    assert none is None
    assert chosen_only is not None and chosen_only.top == ()
    assert first is not None
    logprobs = floats(normalized(LOGITS[0]))
    assert math.isclose(first.logprob, logprobs[ints(tokens)[0]], rel_tol=1e-5)
    best = sorted(range(VOCAB), key=lambda t: -logprobs[t])[:3]
    assert [t for t, _ in first.top] == best
    assert step.top_ids.shape == (3, min(TOP_LOGPROBS, VOCAB))


def test_take_and_extend_keep_rows_aligned() -> None:
    a = BatchRows.admit(
        [SamplingParams(logit_bias=((1, 5.0),)), SamplingParams()], [[0]] * 2, VOCAB
    )
    b = BatchRows.admit([SamplingParams(presence_penalty=1.0)], [[0]], VOCAB)
    joined = a.extend(b)
    assert len(joined) == 3 and joined.bias is not None and joined.counts is not None
    assert joined.bias[2].tolist() == [0.0] * VOCAB
    kept = joined.take([0, 2])
    assert [p.presence_penalty for p in kept.params] == [0.0, 1.0]
    assert kept.bias is not None and kept.bias[0, 1].item() == 5.0
