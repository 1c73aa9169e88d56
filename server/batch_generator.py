"""mlx-lm's `BatchGenerator` with our whole-batch sampling step (`batch_sampling`).

mlx-lm keeps continuous batching (admission, prefill, the KV caches, stop tokens, row
removal); only the decode step's logits processing and sampling are ours. A row's
`SamplingParams` travel in mlx-lm's per-row `samplers` slot, so they follow the row
through every split, filter and extend mlx-lm does; mlx-lm never calls them. Each
response's `logprobs` is the row's `TokenLogprobs`, or None where it did not ask.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch, PromptProcessingBatch

from macprovider.server.batch_sampling import BatchRows, SamplingParams, StepLogprobs


class _RowFields:
    """The types of mlx-lm's per-row batch attributes read here (mlx-lm has no hints)."""

    model: Any
    uids: list[int]
    prompt_cache: list[Any]
    tokens: list[list[int]]
    samplers: list[Any]


class _GenerationBatch(_RowFields, GenerationBatch):  # type: ignore[misc]
    _current_tokens: Any
    _next_tokens: Any
    _next_logprobs: list[Any]

    # Built at the batch's first step, when the vocabulary size is known: rows get their
    # dense arrays once, at admission, and then follow the batch's filters and extends.
    _rows: BatchRows | None = None
    _next_top: StepLogprobs | None = None

    def _step(self) -> tuple[list[int], list[Any]]:
        self._current_tokens = self._next_tokens
        current_top = self._next_top
        inputs = self._current_tokens
        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        if self._rows is None:
            # A row inserted without parameters is greedy, as mlx-lm's default sampler.
            params = [
                s if isinstance(s, SamplingParams) else SamplingParams() for s in self.samplers
            ]
            prompts = [[*t, last] for t, last in zip(self.tokens, inputs.tolist(), strict=True)]
            self._rows = BatchRows.admit(params, prompts, logits.shape[-1])
        rows = self._rows

        def contexts() -> list[list[int]]:
            last = inputs.tolist()
            return [[*tokens, t] for tokens, t in zip(self.tokens, last, strict=True)]

        self._next_tokens, self._next_top = rows.step(logits, contexts)
        self._next_logprobs = [None] * len(self.uids)
        pending = [self._next_tokens, rows.keys, rows.counts]
        if self._next_top is not None:
            top = self._next_top
            pending += [top.chosen, top.top_ids, top.top_values]
        mx.async_eval(*(a for a in pending if a is not None))  # type: ignore[no-untyped-call]
        mx.eval(inputs)
        tokens: list[int] = inputs.tolist()
        for row_tokens, token in zip(self.tokens, tokens, strict=True):
            row_tokens.append(token)
        if current_top is None:
            return tokens, [None] * len(tokens)
        return tokens, current_top.per_row([p.top_logprobs for p in rows.params])

    def filter(self, keep: list[int]) -> None:
        super().filter(keep)
        if not keep:
            self._rows, self._next_top = None, None
            return
        if self._rows is not None:
            self._rows = self._rows.take(keep)
        if self._next_top is not None:
            self._next_top = self._next_top.take(keep)

    def extend(self, batch: _GenerationBatch) -> None:
        had = len(self.uids)
        super().extend(batch)
        if self._rows is None or batch._rows is None:
            self._rows = self._rows or batch._rows
        else:
            self._rows = self._rows.extend(batch._rows)
        self._next_top = _cat_top(self._next_top, batch._next_top, had, len(batch.uids))


def _cat_top(
    a: StepLogprobs | None, b: StepLogprobs | None, rows_a: int, rows_b: int
) -> StepLogprobs | None:
    """Joins two batches' pending logprobs; a side that asked for none gets zeros."""
    if a is None and b is None:
        return None
    like = a if a is not None else b
    assert like is not None

    def zeros(rows: int) -> StepLogprobs:
        k = like.top_ids.shape[1]
        return StepLogprobs(
            mx.zeros((rows,), like.chosen.dtype),
            mx.zeros((rows, k), like.top_ids.dtype),
            mx.zeros((rows, k), like.top_values.dtype),
        )

    a, b = a or zeros(rows_a), b or zeros(rows_b)
    return StepLogprobs(
        mx.concatenate([a.chosen, b.chosen]),
        mx.concatenate([a.top_ids, b.top_ids]),
        mx.concatenate([a.top_values, b.top_values]),
    )


class _PromptBatch(_RowFields, PromptProcessingBatch):  # type: ignore[misc]
    fallback_sampler: Any
    logits_processors: list[Any]
    stop_sequences: list[Any]
    max_tokens: list[int]

    def generate(self, tokens: list[list[int]]) -> _GenerationBatch:
        # mlx-lm's own hand-over to decoding, with our generation batch.
        if any(len(t) > 1 for t in tokens):
            self.prompt([t[:-1] for t in tokens])
        generation = _GenerationBatch(
            self.model,
            self.uids,
            mx.array([t[-1] for t in tokens]),
            self.prompt_cache,
            self.tokens,
            self.samplers,
            self.fallback_sampler,
            self.logits_processors,
            self.stop_sequences,
            self.max_tokens,
        )
        self.uids, self.prompt_cache, self.tokens = [], [], []
        self.samplers, self.logits_processors, self.max_tokens = [], [], []
        return generation


class BatchStepGenerator(BatchGenerator):  # type: ignore[misc]
    """`BatchGenerator` whose `insert(..., samplers=[SamplingParams, ...])` samples with
    one whole-batch step; `logits_processors` are not used."""

    def __init__(self, model: Any, **kwargs: Any):
        super().__init__(model, **kwargs)
        self._prompt_batch = _PromptBatch.empty(
            self.model, self.sampler, prefill_step_size=self.prefill_step_size
        )
        self._generation_batch = _GenerationBatch.empty(self.model, self.sampler)
