"""What a tuning run tells its listeners as it goes (`TuneListener`) and its caller when it
ends (`TuneSummary`), with where its wall time went (`Timings`)."""

from __future__ import annotations

from dataclasses import dataclass

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.messages import Knobs
from macprovider.actors.recommendation import Recommendation
from macprovider.actors.tuning import CellResult


@dataclass(frozen=True)
class Timings:
    """Where a trial's (or a run's) wall time went, in seconds."""

    prewarm_s: float = 0.0
    load_s: float = 0.0
    measure_s: float = 0.0
    stop_s: float = 0.0

    def __add__(self, other: Timings) -> Timings:
        return Timings(
            self.prewarm_s + other.prewarm_s,
            self.load_s + other.load_s,
            self.measure_s + other.measure_s,
            self.stop_s + other.stop_s,
        )

    def total(self) -> float:
        return self.prewarm_s + self.load_s + self.measure_s + self.stop_s


@dataclass(frozen=True)
class TrialEvent:
    """A finished trial, as listeners hear of it."""

    stage: int
    index: int  # 1-based, within its stage
    total: int
    model: str
    knobs: Knobs
    result: CellResult
    notes: str | None
    timings: Timings


class TuneListener:
    """Hears what the tuner does (progress display, `-v` log); by default nothing."""

    def stage_started(self, stage: int, total: int) -> None:
        pass

    def trial_started(self, stage: int, index: int, total: int, model: str, knobs: Knobs) -> None:
        pass

    def replicate_started(self, number: int, total: int) -> None:
        pass

    def trial_finished(self, event: TrialEvent) -> None:
        pass


@dataclass(frozen=True)
class TuneSummary:
    """How a run ended and what it found; also in the DB (`tune_runs`, `tune_trials`)."""

    run_id: str
    exit_reason: ExitReason
    detail: str | None  # one line, when the run ended on a problem
    recommendation: Recommendation | None
    timings: Timings
