"""One autotune run as every output renders it (terminal block, `--json`, HTML, `--compare`),
built from the database alone, so a live run and `report --run ID` print the same thing.

`build_report` is pure; `load_report` reads the DB and the candidates' sizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from macprovider.actors.autotune_inputs import default_sizes_b
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.prewarm_resolve import local_size
from macprovider.actors.recommendation import (
    Infeasible,
    Recommendation,
    alternates,
    infeasible_report,
    recipe_hash,
)
from macprovider.actors.store_errors import StoreError
from macprovider.actors.store_reader import ReadOnlyStore
from macprovider.actors.store_records import StoredRun, StoredTrial
from macprovider.cli.errors import ReportError
from macprovider.cli.size_text import model_size_text

BILLION = 1e9


@dataclass(frozen=True)
class CandidateSizes:
    """What the candidates weigh: billions of parameters (which orders them: the default
    list's metadata, else the local weights' headers) and, for those on this machine, the bytes
    of their weight files (shown beside: a 4-bit copy has the parameters of its bf16 form)."""

    billions: Mapping[str, float]
    weight_bytes: Mapping[str, int]

    def text(self, model: str) -> str:
        billions = self.billions.get(model)
        parameters = None if billions is None else round(billions * BILLION)
        return model_size_text(parameters, self.weight_bytes.get(model))


@dataclass(frozen=True)
class RunReport:
    run: StoredRun
    trials: tuple[StoredTrial, ...]
    recommendation: Recommendation | None
    alternates: tuple[str, ...]  # candidates never probed no larger than the pick, input order
    infeasible: tuple[Infeasible, ...]  # Stage 1 verdicts "does not fit", smallest first
    db_path: Path
    sizes: CandidateSizes

    @property
    def exit_reason(self) -> ExitReason | None:
        """None for a run that never closed (the process was killed)."""
        return self.run.exit_reason

    def stage(self, stage: int) -> tuple[StoredTrial, ...]:
        return tuple(trial for trial in self.trials if trial.record.stage == stage)

    def recipe_hash(self) -> str | None:
        """The stored hash; for a run recorded before hashes were stored, the same function over
        the same stored fields (the hash depends on nothing else), so such a run still has one."""
        if self.recommendation is None:
            return None
        if self.run.recipe_hash is not None:
            return self.run.recipe_hash
        start = self.run.start
        return recipe_hash(
            self.recommendation,
            binary_version=start.binary_version,
            candidate_models=start.candidate_models,
            chip=start.machine_chip,
            ram_gb=start.machine_ram_gb,
        )

    def problem(self) -> str | None:
        """The note that ended a run on a damaged model, if it did."""
        if self.exit_reason is ExitReason.PRE_WARM_INTEGRITY_FAILURE and self.trials:
            return self.trials[-1].record.notes
        return None


def _verdict(trial: StoredTrial) -> bool:
    """A Stage 1 row that says "does not fit", as opposed to one cut short, aborted or whose
    provider was killed from outside (its outcome, `TrialOutcome.infeasible`)."""
    return trial.record.stage == 1 and trial.record.outcome.infeasible


def build_report(
    run: StoredRun, trials: Sequence[StoredTrial], sizes: CandidateSizes, db_path: Path
) -> RunReport:
    candidates = run.start.candidate_models
    recommendation = None
    if run.recommendation_json is not None:
        partial = run.exit_reason is not ExitReason.OK
        document = json.loads(run.recommendation_json)
        recommendation = Recommendation.from_json(document, partial=partial)
    others: tuple[str, ...] = ()
    if recommendation is not None and recommendation.model in candidates:
        others = alternates(candidates, recommendation.model, sizes.billions)
    rows = [
        Infeasible(t.record.model, candidates.index(t.record.model) + 1, t.record.notes or "")
        for t in trials
        if _verdict(t) and t.record.model in candidates
    ]
    infeasible = infeasible_report(rows, sizes.billions)
    return RunReport(run, tuple(trials), recommendation, others, infeasible, db_path, sizes)


def candidate_sizes(models: Sequence[str]) -> CandidateSizes:
    """The candidates' sizes from what this machine holds (nothing is fetched); a model
    neither in the default list's metadata nor local is left out (it sorts last)."""
    known = default_sizes_b()
    billions: dict[str, float] = {}
    weight_bytes: dict[str, int] = {}
    for model in models:
        local = local_size(model)
        if local is not None:
            weight_bytes[model] = local.weight_bytes
        if model in known:
            billions[model] = known[model]
        elif local is not None:
            billions[model] = local.parameters / BILLION
    return CandidateSizes(billions, weight_bytes)


@contextmanager
def _reading(db_path: Path) -> Iterator[ReadOnlyStore]:
    """The database opened read-only; what keeps it from being read is a ReportError (one
    line, exit 66), an older layout included: `report` never migrates."""
    if not db_path.is_file():
        raise ReportError(f"no autotune database at {db_path}")
    try:
        with ReadOnlyStore(db_path) as store:
            yield store
    except StoreError as error:
        raise ReportError(str(error)) from error


def load_report(db_path: Path, run_id: str | None = None) -> RunReport:
    """The run `run_id` (default: the latest) of the database at `db_path`."""
    with _reading(db_path) as store:
        runs = store.runs()
        if run_id is None:
            if not runs:
                raise ReportError(f"{db_path} holds no autotune run yet")
            run = runs[-1]
        else:
            matches = [run for run in runs if run.start.run_id == run_id]
            if not matches:
                raise ReportError(f"{db_path} has no run {run_id!r}")
            run = matches[0]
        trials = store.trials(run.start.run_id)
    sizes = candidate_sizes(run.start.candidate_models)
    return build_report(run, trials, sizes, db_path)


def previous_comparable(db_path: Path, report: RunReport) -> RunReport | None:
    """The latest earlier run on the same machine with the same inputs, for `--compare`."""
    with _reading(db_path) as store:
        earlier = [run for run in store.runs() if _comparable(run, report.run)]
        if not earlier:
            return None
        trials = store.trials(earlier[-1].start.run_id)
    sizes = candidate_sizes(earlier[-1].start.candidate_models)
    return build_report(earlier[-1], trials, sizes, db_path)


def _comparable(run: StoredRun, current: StoredRun) -> bool:
    a, b = run.start, current.start
    return (
        a.run_id != b.run_id
        and a.started_at < b.started_at
        and (a.machine_chip, a.machine_ram_gb) == (b.machine_chip, b.machine_ram_gb)
        and (a.target_context, a.candidate_models) == (b.target_context, b.candidate_models)
    )
