"""How a trial ended, as data: it fits, it is infeasible (and why, by class), or it ended
before any verdict. The tuner decides it when it records the trial (`tune_trials.outcome`);
every report reads it instead of reading the free-text notes.

Pure functions over what the tuner saw; the rules are table-tested in `test_trial_outcome`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from macprovider.actors.messages import LoadFailed
from macprovider.actors.tuning import Replicate, aggregate

INTERRUPTED = "interrupted"
OUT_OF_BUDGET = "out of budget"


class TrialOutcome(StrEnum):
    """The stored values of `tune_trials.outcome`; `fits` is the column `fits = 1`."""

    FITS = "fits"
    # Infeasible: a verdict on this model (Stage 1: it does not fit) or cell on this machine.
    LOAD_FAILED = "load_failed"  # the provider could not be brought up, or died loading
    OVER_TTFT_GATE = "over_ttft_gate"  # Stage 1: TTFT p95 above `--gate-ttft-ms`
    MEASURE_FAILED = "measure_failed"  # a replicate failed, leaked a stop token, or no figure
    # The weights or the probe prompt could not be had, or the model was trained for less than
    # Stage 1's context.
    PREWARM_FAILED = "prewarm_failed"
    # Ended before a verdict: nothing is said about whether it fits.
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    OUT_OF_BUDGET = "out_of_budget"  # `--max-duration` used up mid-trial
    PROVIDER_KILLED = "provider_killed"  # killed from outside (`Exited.killed_from_outside`)
    INTEGRITY_FAILURE = "integrity_failure"  # damaged files: the run stops
    INTERNAL_ERROR = "internal_error"  # a bug; the traceback is in the notes

    @property
    def infeasible(self) -> bool:
        """A verdict against: the report lists it among the infeasible candidates."""
        return self in _INFEASIBLE


_INFEASIBLE = frozenset(
    {
        TrialOutcome.LOAD_FAILED,
        TrialOutcome.OVER_TTFT_GATE,
        TrialOutcome.MEASURE_FAILED,
        TrialOutcome.PREWARM_FAILED,
    }
)

# The notes of a replicate the tuner did not run, by why it stopped.
CUT_NOTES = {TrialOutcome.INTERRUPTED: INTERRUPTED, TrialOutcome.OUT_OF_BUDGET: OUT_OF_BUDGET}


def load_outcome(load: LoadFailed) -> TrialOutcome:
    """A trial whose provider never became ready to measure."""
    if load.killed_from_outside:
        return TrialOutcome.PROVIDER_KILLED
    if load.reason == INTERRUPTED:  # the load's own sentinel, never an engine's text
        return TrialOutcome.INTERRUPTED
    return TrialOutcome.LOAD_FAILED


def measured_outcome(
    replicates: Sequence[Replicate], gate_ttft_ms: float | None, cut: TrialOutcome | None
) -> TrialOutcome:
    """A trial that was measured: `replicates` as run, the last one failed when `cut` says why
    the tuner stopped (interrupted, out of budget, the provider killed from outside).

    A problem in an earlier replicate (a leaked stop token) is a verdict the cut cannot
    undo, as the notes quote the first problem; otherwise a cut trial has no verdict.
    """
    if aggregate(replicates, gate_ttft_ms).feasible:
        return TrialOutcome.FITS
    if cut is not None:
        earlier = replicates[:-1]
        if not earlier or aggregate(earlier, None).feasible:
            return cut
        return TrialOutcome.MEASURE_FAILED
    if aggregate(replicates, None).feasible:  # fine but for the gate
        return TrialOutcome.OVER_TTFT_GATE
    return TrialOutcome.MEASURE_FAILED
