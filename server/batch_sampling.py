"""One sampling and logits-processing step for every row of a decode batch.

Why we do not use mlx-lm's per-row path: `BatchGenerator` applies logits processors
and samplers row by row in Python whenever rows differ (it slices the logits per row,
calls each row's processors, concatenates, and samples each row with its own sampler),
and splits the batch's logprobs into per-row arrays every step. A server gives every
request its own parameters, so every step paid that per-row cost: on an H200 at 64
streams, per-request samplers and logit-bias processors halved the engine's throughput,
and on a small CPU model per-request samplers cut it more than tenfold. Here each
parameter is one array over the batch (`BatchRows`), built once when rows are admitted,
and one step of a few whole-batch ops turns the model's logits into the next tokens.

What a row may ask for, in the order they apply (mlx-lm's order, so a request gets what
its per-request processors and sampler gave it):

* logit bias: a dense additive bias over the vocabulary, built from the sparse request
  once per admission;
* repetition penalty over the prompt and the generated tokens (the CTRL rule: positive
  logits divided, negative multiplied), then presence and frequency penalties over the
  generated tokens only, as OpenAI defines them; the counts stay on the device;
* a structured-output mask: a row's `mask` hook gets the row's tokens so far (prompt and
  generated) and returns one boolean per vocabulary entry, True where allowed; all rows'
  masks apply in one op. A row with a mask makes its step wait for the previous token,
  as any grammar-constrained decoder must;
* top-p, min-p, then top-k over the normalized logprobs, then a sample at the row's
  temperature; temperature 0 is greedy, in the same step as the sampled rows.

Seeds: each row owns a random key, split once per step, so a seeded request draws the
same tokens whatever else shares the batch. The draw is the Gumbel-max trick with the
row's own noise (`mx.random.gumbel` under `mx.vmap`), which has exactly the distribution
of `mx.random.categorical` but not its samples: MLX's categorical does not reproduce
per-row draws under `vmap`, and calling it row by row is the cost this module removes.
So seeded outputs are reproducible here and differ from mlx-lm's per-request sampler's;
the tests check the distribution statistically. Top-k keeps every token tied with the
k-th best (mlx-lm's argpartition keeps exactly k): equal logits are rare in practice.

Logprobs: when any row asks, the chosen token's logprob and the `TOP_LOGPROBS` best are
gathered once per step for the whole batch; each row keeps its own count of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

import mlx.core as mx

# OpenAI's largest `top_logprobs`: the step gathers this many for every row that asks.
TOP_LOGPROBS: Final = 20

MaskFn = Callable[[Sequence[int]], mx.array]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen token's only
    mask: MaskFn | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TokenLogprobs:
    """One row's logprobs for one generated token."""

    logprob: float
    top: tuple[tuple[int, float], ...]  # best first


@dataclass(frozen=True)
class StepLogprobs:
    """The step's logprob arrays for the whole batch, read out once per step."""

    chosen: mx.array  # [B]
    top_ids: mx.array  # [B, K]
    top_values: mx.array  # [B, K]

    def take(self, keep: list[int]) -> StepLogprobs:
        index = mx.array(keep)
        return StepLogprobs(self.chosen[index], self.top_ids[index], self.top_values[index])

    def per_row(self, wanted: Sequence[int | None]) -> list[TokenLogprobs | None]:
        rows: list[TokenLogprobs | None] = [None] * len(wanted)
        asking = [i for i, k in enumerate(wanted) if k is not None]
        if not asking:
            return rows
        # Only the rows that asked are read out: the others' [K] values would cross to
        # Python every step for nothing.
        step = self if len(asking) == len(wanted) else self.take(asking)
        chosen = cast(list[float], step.chosen.tolist())
        ids = cast(list[list[int]], step.top_ids.tolist())
        values = cast(list[list[float]], step.top_values.tolist())
        for j, i in enumerate(asking):
            best = sorted(zip(ids[j], values[j], strict=True), key=lambda p: -p[1])
            rows[i] = TokenLogprobs(chosen[j], tuple(best[: wanted[i]]))
        return rows


def _row_key(seed: int | None) -> mx.array:
    # An unseeded request still needs its own key, so it never shares a stream of noise.
    return mx.random.key(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))


def _dense(rows: Sequence[Sequence[tuple[int, float]]], vocab: int) -> mx.array:
    """A [len(rows), vocab] array with each row's sparse (token, value) pairs added."""
    flat = [(r, t, v) for r, pairs in enumerate(rows) for t, v in pairs]
    dense = mx.zeros((len(rows), vocab), dtype=mx.float32)
    if not flat:
        return dense
    row_ix, token_ix, values = zip(*flat, strict=True)
    return dense.at[mx.array(row_ix), mx.array(token_ix)].add(mx.array(values, dtype=mx.float32))


def _cat(a: mx.array | None, b: mx.array | None, rows_a: int, rows_b: int) -> mx.array | None:
    """Stacks two batches' optional [rows, ...] arrays; an absent side is zeros."""
    if a is None and b is None:
        return None
    shape = (a if a is not None else b).shape[1:]  # type: ignore[union-attr]
    dtype = (a if a is not None else b).dtype  # type: ignore[union-attr]
    a = a if a is not None else mx.zeros((rows_a, *shape), dtype=dtype)
    b = b if b is not None else mx.zeros((rows_b, *shape), dtype=dtype)
    return mx.concatenate([a, b])


@dataclass
class BatchRows:
    """Every parameter of a batch's rows as arrays, in the batch's row order."""

    params: list[SamplingParams]
    vocab: int
    temperature: mx.array
    top_p: mx.array
    top_k: mx.array
    min_p: mx.array
    presence: mx.array
    frequency: mx.array
    repetition: mx.array
    keys: mx.array  # [B, 2]
    bias: mx.array | None  # [B, V]; None: no row has a bias
    counts: mx.array | None  # [B, V] generated-token counts; None: no row has a penalty
    prompt_seen: mx.array | None  # [B, V] prompt tokens; None: no row has a repetition penalty

    @classmethod
    def admit(
        cls, params: Sequence[SamplingParams], prompts: Sequence[Sequence[int]], vocab: int
    ) -> BatchRows:
        """The arrays of newly admitted rows; `prompts` are their prompt tokens."""
        params = list(params)
        n = len(params)

        def column(values: Sequence[float], dtype: mx.Dtype = mx.float32) -> mx.array:
            return mx.array(list(values), dtype=dtype)

        penalised = any(p.presence_penalty or p.frequency_penalty for p in params)
        repeats = any(p.repetition_penalty != 1.0 for p in params)
        prompt_seen = None
        if repeats:
            seen = [[(t, 1.0) for t in set(prompt)] for prompt in prompts]
            prompt_seen = _dense(seen, vocab) > 0
        return cls(
            params=params,
            vocab=vocab,
            temperature=column([max(p.temperature, 0.0) for p in params]),
            top_p=column([p.top_p for p in params]),
            top_k=column([p.top_k for p in params], mx.int32),
            min_p=column([p.min_p for p in params]),
            presence=column([p.presence_penalty for p in params]),
            frequency=column([p.frequency_penalty for p in params]),
            repetition=column([p.repetition_penalty for p in params]),
            keys=mx.stack([_row_key(p.seed) for p in params]),
            bias=_dense([p.logit_bias for p in params], vocab)
            if any(p.logit_bias for p in params)
            else None,
            counts=mx.zeros((n, vocab), dtype=mx.float32) if penalised or repeats else None,
            prompt_seen=prompt_seen,
        )

    def __len__(self) -> int:
        return len(self.params)

    def take(self, keep: list[int]) -> BatchRows:
        index = mx.array(keep)

        def pick(a: mx.array | None) -> mx.array | None:
            return None if a is None else a[index]

        return BatchRows(
            [self.params[i] for i in keep],
            self.vocab,
            self.temperature[index],
            self.top_p[index],
            self.top_k[index],
            self.min_p[index],
            self.presence[index],
            self.frequency[index],
            self.repetition[index],
            self.keys[index],
            pick(self.bias),
            pick(self.counts),
            pick(self.prompt_seen),
        )

    def extend(self, other: BatchRows) -> BatchRows:
        n, m = len(self), len(other)

        def both(a: mx.array, b: mx.array) -> mx.array:
            return mx.concatenate([a, b])

        return BatchRows(
            self.params + other.params,
            self.vocab,
            both(self.temperature, other.temperature),
            both(self.top_p, other.top_p),
            both(self.top_k, other.top_k),
            both(self.min_p, other.min_p),
            both(self.presence, other.presence),
            both(self.frequency, other.frequency),
            both(self.repetition, other.repetition),
            both(self.keys, other.keys),
            _cat(self.bias, other.bias, n, m),
            _cat(self.counts, other.counts, n, m),
            _cat(self.prompt_seen, other.prompt_seen, n, m),
        )

    # -- the step -----------------------------------------------------------------
    def step(
        self, logits: mx.array, contexts: Callable[[], list[list[int]]]
    ) -> tuple[mx.array, StepLogprobs | None]:
        """The next token of every row, and the step's logprobs if any row asked.

        `contexts` gives each row's tokens so far; it is called only for mask hooks.
        """
        logits = self._process(logits, contexts)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        tokens = mx.argmax(logprobs, axis=-1)
        if any(p.temperature > 0 for p in self.params):
            tokens = mx.where(self.temperature > 0, self._sample(logprobs), tokens)
        if self.counts is not None:
            self.counts = self.counts.at[mx.arange(len(self)), tokens].add(1.0)
        wanted = any(p.top_logprobs is not None for p in self.params)
        return tokens, self._logprobs(logprobs, tokens) if wanted else None

    def _process(self, logits: mx.array, contexts: Callable[[], list[list[int]]]) -> mx.array:
        dtype = logits.dtype
        if self.bias is not None:
            logits = logits + self.bias.astype(dtype)
        if self.counts is not None:
            seen = self.counts > 0
            if self.prompt_seen is not None:
                rep = self.repetition[:, None].astype(dtype)
                repeated = (seen | self.prompt_seen) & (rep != 1)
                penalised = mx.where(logits < 0, logits * rep, logits / rep)
                logits = mx.where(repeated, penalised, logits)
            logits = logits - (self.presence[:, None] * seen).astype(dtype)
            logits = logits - (self.frequency[:, None] * self.counts).astype(dtype)
        masks = [p.mask for p in self.params]
        if any(m is not None for m in masks):
            allowed = mx.ones((self.vocab,), dtype=mx.bool_)
            rows = contexts()
            stacked = mx.stack([allowed if m is None else m(rows[i]) for i, m in enumerate(masks)])
            logits = mx.where(stacked, logits, mx.array(-float("inf"), dtype))
        return logits

    def _filter(self, logprobs: mx.array) -> mx.array:
        """Each row's top-p, min-p and top-k, in mlx-lm's order; -inf marks what is out."""
        params = self.params
        if any(p.top_p < 1.0 for p in params):
            logprobs = mx.where(self.top_p[:, None] < 1.0, _top_p(logprobs, self.top_p), logprobs)
        if any(p.min_p > 0.0 for p in params):
            floor = mx.max(logprobs, axis=-1, keepdims=True) + mx.log(self.min_p)[:, None]
            logprobs = mx.where(logprobs < floor, -float("inf"), logprobs)
        if any(p.top_k > 0 for p in params):
            logprobs = _top_k(logprobs, self.top_k)
        return logprobs

    def _sample(self, logprobs: mx.array) -> mx.array:
        # Not `mx.compile`d, unlike mlx-lm's samplers: compiled, the draw and filters cost
        # serve's 64 mixed streams on an H200 more than two thirds of their rate (a trace
        # for every batch size as rows come and go), and on the CPU gained within noise.
        logprobs = self._filter(logprobs)
        split = mx.vmap(mx.random.split)(self.keys)
        self.keys, step_keys = split[:, 0], split[:, 1]
        vocab = logprobs.shape[-1]
        noise = mx.vmap(lambda k: mx.random.gumbel(shape=(vocab,), key=k))(step_keys)
        # Greedy rows get a scale of 1; their sample is discarded.
        scale = 1.0 / mx.where(self.temperature > 0, self.temperature, 1.0)
        return mx.argmax(logprobs * scale[:, None] + noise, axis=-1)

    def _logprobs(self, logprobs: mx.array, tokens: mx.array) -> StepLogprobs:
        k = min(TOP_LOGPROBS, logprobs.shape[-1])
        top_ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
        return StepLogprobs(
            mx.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0],
            top_ids,
            mx.take_along_axis(logprobs, top_ids, axis=-1),
        )


def _top_p(logprobs: mx.array, top_p: mx.array) -> mx.array:
    """mlx-lm's `apply_top_p` with one threshold per row."""
    ordered = mx.sort(logprobs, axis=-1)
    probs = mx.exp(ordered.astype(mx.float32))
    mass_above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    total = mass_above[..., :1] + probs[..., :1]
    dropped = (mass_above >= top_p[:, None] * total).sum(axis=-1, keepdims=True)
    threshold = mx.take_along_axis(ordered, dropped, axis=-1)
    return mx.where(logprobs < threshold, -float("inf"), logprobs)


def _top_k(logprobs: mx.array, top_k: mx.array) -> mx.array:
    """Keeps each row's `top_k` best (0: all); ties with the k-th best are kept."""
    descending = -mx.sort(-logprobs, axis=-1)
    kth = mx.clip(top_k - 1, 0, logprobs.shape[-1] - 1)[:, None]
    threshold = mx.take_along_axis(descending, kth.astype(mx.int32), axis=-1)
    threshold = mx.where(top_k[:, None] > 0, threshold, -float("inf"))
    return mx.where(logprobs < threshold, -float("inf"), logprobs)
