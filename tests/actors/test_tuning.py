import pytest

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.tuning import (
    Budget,
    Cell,
    CellResult,
    Replicate,
    aggregate,
    beyond_training,
    budget_exit_reason,
    keeps_best,
    nearest_rank_percentile,
    replicate_tps,
    size_order,
    stage2_cells,
)


def rep(
    tokens: int = 100,
    wall_s: float = 1.0,
    ttft_ms: tuple[float, ...] = (100.0,),
    *,
    ok: bool = True,
    reason: str | None = None,
    leaked: bool = False,
) -> Replicate:
    return Replicate(ok, tokens, wall_s, ttft_ms, reason, leaked)


def cell(tps: float | None, ttft: float | None = 100.0, *, feasible: bool = True) -> CellResult:
    return CellResult(tps, ttft, 3, 0 if feasible else 1, feasible, None if feasible else "x")


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([5.0], 95, 5.0),
        ([3.0, 1.0, 2.0], 95, 3.0),  # ⌈2.85⌉ = 3: the largest
        ([float(v) for v in range(1, 20)], 95, 19.0),  # ⌈18.05⌉ = 19: still the largest
        ([float(v) for v in range(20, 0, -1)], 95, 19.0),  # ⌈19⌉ = 19: order does not matter
        ([float(v) for v in range(1, 21)], 50, 10.0),
        ([float(v) for v in range(1, 101)], 95, 95.0),
        ([float(v) for v in range(1, 102)], 95, 96.0),  # ⌈95.95⌉ = 96
        ([10.0, 20.0, 30.0, 40.0], 100, 40.0),
        ([10.0, 20.0, 30.0, 40.0], 1, 10.0),
    ],
)
def test_nearest_rank_percentile(values: list[float], percent: int, expected: float) -> None:
    assert nearest_rank_percentile(values, percent) == expected


@pytest.mark.parametrize(("values", "percent"), [([], 95), ([1.0], 0), ([1.0], 101)])
def test_nearest_rank_percentile_rejects_bad_input(values: list[float], percent: int) -> None:
    with pytest.raises(ValueError):
        nearest_rank_percentile(values, percent)


@pytest.mark.parametrize(
    ("replicate", "expected"),
    [
        (rep(tokens=96, wall_s=2.0), 48.0),  # aggregate over the replicate's streams
        (rep(tokens=0, wall_s=2.0), None),
        (rep(tokens=10, wall_s=0.0), None),
        (rep(tokens=10, wall_s=-1.0), None),
    ],
)
def test_replicate_throughput(replicate: Replicate, expected: float | None) -> None:
    assert replicate_tps(replicate) == expected


@pytest.mark.parametrize(
    ("replicates", "gate", "expected"),
    [
        (  # median of 3: 2.0, 2.1, 2.05 -> 2.05
            [rep(200, 100.0, (50.0,)), rep(210, 100.0, (70.0,)), rep(205, 100.0, (60.0,))],
            None,
            CellResult(2.05, 70.0, 3, 0, True, None),
        ),
        (  # even count: mean of the middle two; p95 over every stream's TTFT
            [rep(10, 1.0, (1.0, 2.0)), rep(20, 1.0, (3.0,)), rep(30, 1.0, (4.0, 9.0))],
            None,
            CellResult(20.0, 9.0, 3, 0, True, None),
        ),
        (
            [rep(10, 1.0), rep(30, 1.0)],
            None,
            CellResult(20.0, 100.0, 2, 0, True, None),
        ),
        (  # one failed replicate makes the cell infeasible, with its reason
            [rep(200, 100.0), rep(0, 5.0, (), ok=False, reason="HTTP 500"), rep(210, 100.0)],
            None,
            CellResult(2.05, 100.0, 3, 1, False, "HTTP 500"),
        ),
        (  # the first reason wins
            [rep(ok=False, reason="timeout"), rep(ok=False, reason="provider exited")],
            None,
            CellResult(None, 100.0, 2, 2, False, "timeout"),
        ),
        (
            [rep(), rep(ok=False)],
            None,
            CellResult(100.0, 100.0, 2, 1, False, "replicate 2 failed"),
        ),
        (  # a leaked stop token is infeasible
            [rep(), rep(leaked=True)],
            None,
            CellResult(100.0, 100.0, 2, 0, False, "replicate 2: stop token leaked into the text"),
        ),
        (  # zero throughput: unmeasurable, never feasible
            [rep(), rep(tokens=0, ttft_ms=())],
            None,
            CellResult(
                None, 100.0, 2, 0, False, "replicate 2: unmeasurable throughput (0 tokens in 1 s)"
            ),
        ),
        (
            [rep(wall_s=0.0)],
            None,
            CellResult(
                None, 100.0, 1, 0, False, "replicate 1: unmeasurable throughput (100 tokens in 0 s)"
            ),
        ),
        (
            [rep(ttft_ms=())],
            None,
            CellResult(100.0, None, 1, 0, False, "no time to first token was measured"),
        ),
        ([], None, CellResult(None, None, 0, 0, False, "no replicates ran")),
    ],
)
def test_aggregate(replicates: list[Replicate], gate: float | None, expected: CellResult) -> None:
    assert aggregate(replicates, gate) == expected


@pytest.mark.parametrize(
    ("ttfts", "gate", "feasible"),
    [
        ((100.0,), None, True),  # Stage 2: no gate
        ((90_000.0,), None, True),
        ((59_999.0,), 60_000.0, True),
        ((60_000.0,), 60_000.0, True),  # at the gate is within it
        ((60_001.0,), 60_000.0, False),
        # p95 of 20 TTFTs is the 19th: one slow outlier passes, two do not
        (tuple([100.0] * 19 + [70_000.0]), 60_000.0, True),
        (tuple([100.0] * 18 + [70_000.0] * 2), 60_000.0, False),
    ],
)
def test_aggregate_applies_the_ttft_gate(
    ttfts: tuple[float, ...], gate: float | None, feasible: bool
) -> None:
    result = aggregate([rep(ttft_ms=ttfts)], gate)
    assert result.feasible is feasible
    if not feasible:
        assert result.reason is not None
        assert result.reason.endswith("ms exceeds the gate 60000 ms")


@pytest.mark.parametrize(
    ("new", "best", "epsilon", "wins"),
    [
        # never wins: infeasible, unmeasurable or zero throughput
        (cell(500.0, feasible=False), None, 0.02, False),
        (cell(None), None, 0.02, False),
        (cell(0.0), None, 0.02, False),
        (cell(500.0, feasible=False), cell(1.0), 0.02, False),
        (cell(None, 1.0), cell(10.0, 900.0), 0.02, False),
        (cell(0.0, 1.0), cell(10.0, 900.0), 0.02, False),
        # no best yet: a feasible, measurable cell wins
        (cell(1.0), None, 0.02, True),
        # outside the band: throughput decides
        (cell(103.0, 500.0), cell(100.0, 100.0), 0.02, True),
        (cell(97.0, 1.0), cell(100.0, 100.0), 0.02, False),
        # inside the band: the strictly lower TTFT p95 wins, a TTFT tie keeps the incumbent
        (cell(101.0, 90.0), cell(100.0, 100.0), 0.02, True),
        (cell(101.0, 110.0), cell(100.0, 100.0), 0.02, False),
        (cell(101.0, 100.0), cell(100.0, 100.0), 0.02, False),
        (cell(99.0, 90.0), cell(100.0, 100.0), 0.02, True),
        (cell(100.0, 100.0), cell(100.0, 100.0), 0.02, False),
        # band edges (ε = 0.25, exact in binary): both edges are inside the band
        (cell(125.0, 90.0), cell(100.0, 100.0), 0.25, True),
        (cell(125.0, 110.0), cell(100.0, 100.0), 0.25, False),
        (cell(125.5, 110.0), cell(100.0, 100.0), 0.25, True),  # just above: wins on tps
        (cell(75.0, 90.0), cell(100.0, 100.0), 0.25, True),
        (cell(75.0, 100.0), cell(100.0, 100.0), 0.25, False),
        (cell(74.5, 1.0), cell(100.0, 100.0), 0.25, False),  # just below: loses
        # band edges at the default ε
        (cell(102.0, 90.0), cell(100.0, 100.0), 0.02, True),
        (cell(102.0, 110.0), cell(100.0, 100.0), 0.02, False),
        (cell(98.0, 90.0), cell(100.0, 100.0), 0.02, True),
        (cell(97.99, 1.0), cell(100.0, 100.0), 0.02, False),
        (cell(102.01, 110.0), cell(100.0, 100.0), 0.02, True),
        # ε = 0: strictly more throughput wins; equal throughput falls to TTFT
        (cell(100.5, 200.0), cell(100.0, 100.0), 0.0, True),
        (cell(100.0, 90.0), cell(100.0, 100.0), 0.0, True),
        (cell(99.5, 1.0), cell(100.0, 100.0), 0.0, False),
        # a missing TTFT counts as worst inside the band
        (cell(101.0, None), cell(100.0, 100.0), 0.02, False),
        (cell(101.0, 100.0), cell(100.0, None), 0.02, True),
    ],
)
def test_keeps_best(new: CellResult, best: CellResult | None, epsilon: float, wins: bool) -> None:
    assert keeps_best(new, best, epsilon) is wins


def test_keeps_best_rejects_a_negative_epsilon() -> None:
    with pytest.raises(ValueError):
        keeps_best(cell(1.0), None, -0.01)


@pytest.mark.parametrize(
    ("kv_bits", "max_batch", "max_context", "expected"),
    [
        (
            (None, 4, 8),
            (1, 2),
            (2000,),
            (
                Cell(None, 1, 2000),
                Cell(None, 2, 2000),
                Cell(4, 1, 2000),
                Cell(4, 2, 2000),
                Cell(8, 1, 2000),
                Cell(8, 2, 2000),
            ),
        ),
        (
            (8, None),
            (2, 1),
            (2000, 4096),
            (
                Cell(8, 2, 2000),
                Cell(8, 2, 4096),
                Cell(8, 1, 2000),
                Cell(8, 1, 4096),
                Cell(None, 2, 2000),
                Cell(None, 2, 4096),
                Cell(None, 1, 2000),
                Cell(None, 1, 4096),
            ),
        ),
        ((4,), (1,), (2000,), (Cell(4, 1, 2000),)),
    ],
)
def test_stage2_cells_order(
    kv_bits: tuple[int | None, ...],
    max_batch: tuple[int, ...],
    max_context: tuple[int, ...],
    expected: tuple[Cell, ...],
) -> None:
    cells = stage2_cells(kv_bits, max_batch, max_context)
    assert cells == expected
    assert len(cells) == len(kv_bits) * len(max_batch) * len(max_context)


@pytest.mark.parametrize(
    ("models", "sizes", "expected"),
    [
        (
            ("large", "medium", "small"),
            {"large": 30, "medium": 7, "small": 1},
            ("small", "medium", "large"),
        ),
        (("small", "large"), {"large": 30.0, "small": 1.0}, ("small", "large")),
        (("b", "a", "c"), {"a": 3.0, "b": 3.0, "c": 1.0}, ("c", "b", "a")),  # ties: input order
        (("x", "big", "y", "tiny"), {"big": 9.0, "tiny": 0.5}, ("tiny", "big", "x", "y")),
        (("x", "y"), {}, ("x", "y")),
        ((), {"a": 1.0}, ()),
    ],
)
def test_size_order_is_smallest_first(
    models: tuple[str, ...], sizes: dict[str, float], expected: tuple[str, ...]
) -> None:
    assert size_order(models, sizes) == expected


@pytest.mark.parametrize(
    ("now", "remaining", "exhausted"),
    [
        (1000.0, 7200.0, False),
        (1001.5, 7198.5, False),
        (8199.0, 1.0, False),
        (8200.0, 0.0, True),  # at the deadline the budget is used up
        (9000.0, 0.0, True),  # never negative
    ],
)
def test_budget(now: float, remaining: float, exhausted: bool) -> None:
    budget = Budget(max_duration_s=7200.0, started_at=1000.0)
    assert budget.remaining(now) == remaining
    assert budget.exhausted(now) is exhausted


@pytest.mark.parametrize(
    ("stage", "has_best", "expected"),
    [
        (1, False, "budget_exhausted_no_model_selected"),
        (1, True, "budget_exhausted_no_model_selected"),
        (2, False, "budget_exhausted_no_model_selected"),
        (2, True, "budget_exhausted_with_partial_recommendation"),
    ],
)
def test_budget_exit_reason(stage: int, has_best: bool, expected: str) -> None:
    reason = budget_exit_reason(stage, has_best)
    assert reason == expected
    assert reason in set(ExitReason)


@pytest.mark.parametrize("stage", [0, 3])
def test_budget_exit_reason_rejects_unknown_stages(stage: int) -> None:
    with pytest.raises(ValueError):
        budget_exit_reason(stage, True)


@pytest.mark.parametrize(
    ("trained", "context", "refused"),
    [(None, 200_000, False), (8192, 8192, False), (8192, 2048, False), (8192, 8193, True)],
    ids=["unknown", "exactly", "below", "one-past"],
)
def test_a_candidate_is_not_measured_past_its_trained_context(
    trained: int | None, context: int, refused: bool
) -> None:
    reason = beyond_training(trained, context)
    assert (reason is not None) == refused
    if reason is not None:
        assert f"trained for {trained} tokens" in reason and str(context) in reason
