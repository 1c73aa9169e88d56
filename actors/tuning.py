"""Autotune's decisions over measurements: aggregation, keep-best, cell order, size order, budget.

Pure functions (no I/O, no clock reads: callers pass `now`); the rules they implement are
README's `autotune` section and docs/ARCHITECTURE.md's autotune pipeline.

Percentiles use the nearest-rank method: for n sorted values x_1 ≤ … ≤ x_n, the p-th
percentile is x_k with k = ⌈p · n / 100⌉ (1-based). So p95 of 1..20 is 19, of 1..100 is 95,
and of one to nineteen values it is the largest value. No interpolation: the result is always
a measured TTFT.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from macprovider.actors.exit_reasons import ExitReason


@dataclass(frozen=True)
class Replicate:
    """One replicate of a trial: `b` concurrent streams at `max_batch = b` (1 in Stage 1).

    `tokens` are the tokens generated over all streams, `wall_s` the replicate's wall time from
    the first request start to the last stream end, `ttft_ms` one time-to-first-token per
    stream that produced a first token. `ok` is False when any request failed (HTTP error,
    timeout, provider exit); `reason` then says why.
    """

    ok: bool
    tokens: int
    wall_s: float
    ttft_ms: tuple[float, ...]
    reason: str | None
    stop_token_leaked: bool


@dataclass(frozen=True)
class CellResult:
    """A trial's (Stage 1 candidate or Stage 2 cell) aggregate and its feasibility."""

    tps_median: float | None
    ttft_p95_ms: float | None
    replicates: int
    failed: int
    feasible: bool
    reason: str | None


@dataclass(frozen=True)
class Cell:
    """One Stage 2 knob combination; `kv_bits` None is an unquantized KV cache."""

    kv_bits: int | None
    max_batch: int
    max_context: int


def nearest_rank_percentile(values: Sequence[float], percent: int) -> float:
    """The nearest-rank `percent`-th percentile (1 ≤ percent ≤ 100) of non-empty `values`."""
    if not values:
        raise ValueError("percentile of no values")
    if not 1 <= percent <= 100:
        raise ValueError(f"percent must be within 1..100, not {percent}")
    ordered = sorted(values)
    rank = -(-percent * len(ordered) // 100)  # ⌈percent · n / 100⌉ in exact integer arithmetic
    return ordered[rank - 1]


def replicate_tps(replicate: Replicate) -> float | None:
    """Aggregate throughput of one replicate (tokens / wall time); None when unmeasurable."""
    if replicate.tokens <= 0 or replicate.wall_s <= 0:
        return None
    return replicate.tokens / replicate.wall_s


def _replicate_problem(number: int, replicate: Replicate) -> str | None:
    if not replicate.ok:
        return replicate.reason or f"replicate {number} failed"
    if replicate.stop_token_leaked:
        return f"replicate {number}: stop token leaked into the text"
    if replicate_tps(replicate) is None:
        return (
            f"replicate {number}: unmeasurable throughput "
            f"({replicate.tokens} tokens in {replicate.wall_s:g} s)"
        )
    return None


def aggregate(replicates: Sequence[Replicate], gate_ttft_ms: float | None) -> CellResult:
    """Aggregate a trial's replicates into its value and feasibility.

    - `tps_median`: median of the per-replicate throughputs of the successful replicates
      (mean of the middle two for an even count); None when there is no successful replicate
      or any successful one is unmeasurable (no tokens, or wall time ≤ 0).
    - `ttft_p95_ms`: nearest-rank p95 over every TTFT of every replicate; None without any.
    - Infeasible, with the first problem in replicate order as `reason`, when a replicate
      failed, leaked a stop token, or had unmeasurable throughput; otherwise infeasible when
      no TTFT was measured or the p95 exceeds `gate_ttft_ms` (Stage 1 passes the gate,
      Stage 2 passes None). A cell at exactly the gate is feasible.
    """
    failed = sum(1 for replicate in replicates if not replicate.ok)
    ok_tps = [replicate_tps(replicate) for replicate in replicates if replicate.ok]
    measured = [tps for tps in ok_tps if tps is not None]
    tps_median = statistics.median(measured) if measured and len(measured) == len(ok_tps) else None
    ttfts = [ttft for replicate in replicates for ttft in replicate.ttft_ms]
    ttft_p95 = nearest_rank_percentile(ttfts, 95) if ttfts else None

    def result(reason: str | None) -> CellResult:
        return CellResult(
            tps_median=tps_median,
            ttft_p95_ms=ttft_p95,
            replicates=len(replicates),
            failed=failed,
            feasible=reason is None,
            reason=reason,
        )

    if not replicates:
        return result("no replicates ran")
    for number, replicate in enumerate(replicates, start=1):
        problem = _replicate_problem(number, replicate)
        if problem is not None:
            return result(problem)
    if ttft_p95 is None:
        return result("no time to first token was measured")
    if gate_ttft_ms is not None and ttft_p95 > gate_ttft_ms:
        return result(f"TTFT p95 {ttft_p95:g} ms exceeds the gate {gate_ttft_ms:g} ms")
    return result(None)


def _measurable_winner(cell: CellResult) -> bool:
    return cell.feasible and cell.tps_median is not None and cell.tps_median > 0


def keeps_best(new: CellResult, best: CellResult | None, epsilon: float) -> bool:
    """Whether `new` replaces `best` as the kept cell (ε = `--tps-tie-epsilon`, ≥ 0).

    An infeasible cell, or one with unmeasurable or zero throughput, never wins. Without a
    (measurable) best, any other cell wins. Otherwise `new` wins when its throughput exceeds
    best × (1 + ε); inside the tie band |new − best| ≤ best × ε the strictly lower TTFT p95
    wins (a tie keeps the incumbent; a missing TTFT counts as worst); below the band it loses.
    """
    if epsilon < 0:
        raise ValueError(f"the tie epsilon must be ≥ 0, not {epsilon}")
    if not _measurable_winner(new):
        return False
    if best is None or not _measurable_winner(best):
        return True
    assert new.tps_median is not None and best.tps_median is not None
    if new.tps_median > best.tps_median * (1 + epsilon):
        return True
    # Not above the band; the band's upper edge is the complement of the test above, so that
    # no float rounding leaves a gap between "wins outright" and "inside the band".
    if best.tps_median - new.tps_median > best.tps_median * epsilon:
        return False
    if new.ttft_p95_ms is None:
        return False
    return best.ttft_p95_ms is None or new.ttft_p95_ms < best.ttft_p95_ms


def stage2_cells(
    kv_bits_axis: Sequence[int | None],
    max_batch_axis: Sequence[int],
    max_context_axis: Sequence[int],
) -> tuple[Cell, ...]:
    """The Stage 2 cells in their deterministic order: the cartesian product with kv-bits
    outermost (in axis order), then max-batch (in axis order), then max-context innermost (in
    axis order, which the parser sorts ascending). E.g. axes `unset,4` × `1,2` × `2000` give
    (unset,1,2000), (unset,2,2000), (4,1,2000), (4,2,2000).
    """
    return tuple(
        Cell(kv_bits, max_batch, max_context)
        for kv_bits, max_batch, max_context in itertools.product(
            kv_bits_axis, max_batch_axis, max_context_axis
        )
    )


def size_order(models: Sequence[str], sizes: Mapping[str, float]) -> tuple[str, ...]:
    """`models` smallest first by real size, for the all-infeasible report.

    Equal sizes keep their input order; models without a known size come last, in input order.
    """
    return tuple(sorted(models, key=lambda model: (model not in sizes, sizes.get(model, 0.0))))


@dataclass(frozen=True)
class Budget:
    """The `--max-duration` budget of a run; times in seconds on the caller's monotonic clock."""

    max_duration_s: float
    started_at: float

    def remaining(self, now: float) -> float:
        """Seconds left at `now`, never negative."""
        return max(0.0, self.started_at + self.max_duration_s - now)

    def exhausted(self, now: float) -> bool:
        """Whether the budget is used up at `now` (at the deadline itself it is)."""
        return now - self.started_at >= self.max_duration_s


def budget_exit_reason(stage: int, has_best: bool) -> ExitReason:
    """The exit reason of a run out of budget in `stage` (1 or 2).

    Stage 1, or Stage 2 before any cell was kept: no model selected. Stage 2 with a best cell:
    the best so far is emitted as a partial recommendation.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, not {stage}")
    if stage == 2 and has_best:
        return ExitReason.BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION
    return ExitReason.BUDGET_EXHAUSTED_NO_MODEL_SELECTED


def beyond_training(trained: int | None, context: int) -> str | None:
    """Why a candidate trained for `trained` tokens cannot be measured at Stage 1's `context`,
    or None. A model is not asked to serve positions it never learned, however fast it runs:
    its answers there are not the model's. (Stage 2's axis is the operator's own; each
    provider warns of a cell past the trained context.)"""
    if trained is None or context <= trained:
        return None
    return (
        f"trained for {trained} tokens, below Stage 1's context {context} "
        "(--target-context + --probe-max-tokens)"
    )
