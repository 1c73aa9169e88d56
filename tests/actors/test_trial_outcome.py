"""How a trial's ending becomes its stored outcome: one table per rule, no processes."""

from __future__ import annotations

import pytest

from macprovider.actors.messages import LoadFailed
from macprovider.actors.trial_outcome import (
    INTERRUPTED,
    TrialOutcome,
    load_outcome,
    measured_outcome,
)
from macprovider.actors.tuning import Replicate

GATE_MS = 1000.0


def fine(ttft_ms: float = 100.0) -> Replicate:
    return Replicate(True, 64, 2.0, (ttft_ms,), None, False)


def failed(reason: str) -> Replicate:
    return Replicate(False, 0, 0.0, (), reason, False)


LEAKED = Replicate(True, 64, 2.0, (100.0,), None, True)

LOADS = {
    "died with an exit code": (LoadFailed("... (exit 65): oom", exited=True), "load_failed"),
    "not ready in time": (LoadFailed("provider not ready within 2 s", exited=False), "load_failed"),
    "killed from outside": (
        LoadFailed("... (killed by SIGKILL): no output", exited=True, killed_from_outside=True),
        "provider_killed",
    ),
    "Ctrl-C while loading": (LoadFailed(INTERRUPTED, exited=False), "interrupted"),
}


@pytest.mark.parametrize(("load", "outcome"), LOADS.values(), ids=LOADS.keys())
def test_a_trial_that_never_got_measured(load: LoadFailed, outcome: str) -> None:
    assert load_outcome(load) == TrialOutcome(outcome)


CUT_BY_CTRL_C = TrialOutcome.INTERRUPTED
MEASURED: dict[str, tuple[list[Replicate], float | None, TrialOutcome | None, str]] = {
    "all fine under the gate": ([fine(), fine()], GATE_MS, None, "fits"),
    "Stage 2 has no gate": ([fine(5000.0)], None, None, "fits"),
    "over the gate": ([fine(5000.0)], GATE_MS, None, "over_ttft_gate"),
    "a failed replicate": ([fine(), failed("HTTP 500")], GATE_MS, None, "measure_failed"),
    "a leaked stop token": ([LEAKED], None, None, "measure_failed"),
    "no replicate at all": ([], GATE_MS, None, "measure_failed"),
    "cut by Ctrl-C after a fine one": (
        [fine(), failed(INTERRUPTED)],
        GATE_MS,
        CUT_BY_CTRL_C,
        "interrupted",
    ),
    "cut before any": (
        [failed("out of budget")],
        GATE_MS,
        TrialOutcome.OUT_OF_BUDGET,
        "out_of_budget",
    ),
    "provider killed mid-measure": (
        [failed("... (killed by SIGKILL)")],
        None,
        TrialOutcome.PROVIDER_KILLED,
        "provider_killed",
    ),
    "a leak before the cut stays a verdict": (
        [LEAKED, failed(INTERRUPTED)],
        None,
        CUT_BY_CTRL_C,
        "measure_failed",
    ),
}


@pytest.mark.parametrize(
    ("replicates", "gate", "cut", "outcome"), MEASURED.values(), ids=MEASURED.keys()
)
def test_a_measured_trial(
    replicates: list[Replicate], gate: float | None, cut: TrialOutcome | None, outcome: str
) -> None:
    assert measured_outcome(replicates, gate, cut) == TrialOutcome(outcome)


def test_only_the_verdicts_against_are_infeasible() -> None:
    infeasible = {outcome.value for outcome in TrialOutcome if outcome.infeasible}
    assert infeasible == {"load_failed", "over_ttft_gate", "measure_failed", "prewarm_failed"}
