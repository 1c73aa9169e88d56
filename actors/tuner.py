"""The Tuner: Stage 1 (the biggest candidate that fits, in the operator's order, stopping at
the first feasible one), then Stage 2 (the knob cells of that model).

A plain object, run on its own thread by the TunerActor (`tuner_actor`). It owns no process,
socket or file: it asks the PrewarmActor (weights, load), the ProviderActor (health, stop),
the ProbeActor (measured replicates) and the StoreActor (every trial, as it finishes, with
its `TrialOutcome`), and decides with the pure functions of `tuning`, `trial_outcome` and
`recommendation`. A Ctrl-C sets the shared `cancel` event: the step in flight returns early,
its trial is recorded as interrupted, the provider is stopped and the run row is closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, TypeVar, cast

import pykka

from macprovider.actors.autotune_inputs import TuneSettings
from macprovider.actors.drain import DrainProxy
from macprovider.actors.drain_decisions import conflict_message
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.messages import DrainFailed, Knobs, Loaded, LoadFailed, ProbeSpec
from macprovider.actors.prewarm import (
    PrewarmError,
    PrewarmIntegrityError,
    PrewarmProxy,
    PrewarmTransientError,
)
from macprovider.actors.probe import ProbeProxy
from macprovider.actors.probe_prompt import ProbePrompt, build_probe_prompt, load_prompt_tokenizer
from macprovider.actors.provider import ProviderProxy
from macprovider.actors.recommendation import Recommendation, recipe_hash, recommend
from macprovider.actors.store_actor import StoreProxy
from macprovider.actors.store_records import KvBits, RunStart, Stage, TrialRecord
from macprovider.actors.trial_outcome import (
    CUT_NOTES,
    INTERRUPTED,
    TrialOutcome,
    load_outcome,
    measured_outcome,
)
from macprovider.actors.tune_events import Timings, TrialEvent, TuneListener, TuneSummary
from macprovider.actors.tuning import (
    Budget,
    Cell,
    CellResult,
    Replicate,
    aggregate,
    beyond_training,
    budget_exit_reason,
    keeps_best,
    stage2_cells,
)

log = logging.getLogger("macprovider.autotune")

STOP_GRACE_S: Final = 10.0
# Added to a call's own bound when waiting on another actor's future: a wedged actor becomes
# an error instead of a hang.
CALL_MARGIN_S: Final = 60.0
# A first download of a big model can take hours; Ctrl-C still ends the run (the provider
# and the DB are safe), the fetch thread just is not waited for.
PREWARM_TIMEOUT_S: Final = 24 * 3600.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class Peers:
    """The actors a Tuner asks."""

    store: StoreProxy
    prewarm: PrewarmProxy
    provider: ProviderProxy
    probe: ProbeProxy
    drain: DrainProxy


@dataclass(frozen=True)
class _Prepared:
    """A candidate ready to measure: local, with its probe prompt and stop texts."""

    model: str
    prompt: ProbePrompt
    stop_texts: tuple[str, ...]
    stop_ids: tuple[int, ...]


class _Stop(Exception):
    def __init__(self, reason: ExitReason, detail: str | None = None) -> None:
        super().__init__(detail or reason.value)
        self.reason = reason
        self.detail = detail


def _unmeasured(reason: str) -> CellResult:
    return CellResult(None, None, replicates=0, failed=1, feasible=False, reason=reason)


def _failed_replicate(reason: str) -> Replicate:
    return Replicate(False, 0, 0.0, (), reason, False)


class Tuner:
    def __init__(
        self,
        settings: TuneSettings,
        run: RunStart,
        peers: Peers,
        cancel: threading.Event,
        listener: TuneListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._run = run
        self._peers = peers
        self._cancel = cancel
        self._listener = listener or TuneListener()
        self._clock = clock
        self._budget = Budget(settings.max_duration_s, clock())
        self._chosen: _Prepared | None = None
        self._best: tuple[Cell, CellResult] | None = None
        self._time = Timings()
        self._stage: Stage = 1
        self._model = "-"

    def run(self) -> TuneSummary:
        """Tunes, records every trial and closes the run row; returns how it ended."""
        self._budget = Budget(self._settings.max_duration_s, self._clock())
        self._call(self._peers.store.begin_run(self._run), 0)
        try:
            reason, detail = self._tune(), None
        except _Stop as stop:
            reason, detail = stop.reason, stop.detail
        return self._finish(reason, detail)

    def record_crash(self, trace: str) -> None:
        """Best effort after an unexpected error: the traceback in a trial row, the run closed."""
        crash = _unmeasured("internal error")
        with contextlib.suppress(Exception):
            self._record(
                self._stage, self._model, Knobs(), crash, TrialOutcome.INTERNAL_ERROR, trace
            )
        with contextlib.suppress(Exception):
            self._close_run(ExitReason.INTERNAL_ERROR, None)

    # --- stages ---

    def _tune(self) -> ExitReason:
        self._preflight()
        chosen = self._stage1()
        if chosen is None:
            target = self._settings.target_context
            raise _Stop(ExitReason.NO_FEASIBLE, f"no candidate fits at {target} context tokens")
        self._chosen = chosen
        self._stage2(chosen)
        if self._best is None:
            raise _Stop(ExitReason.NO_FEASIBLE, f"no Stage 2 cell of {chosen.model} was feasible")
        return ExitReason.OK

    def _preflight(self) -> None:
        """Before any start: is a provider already live? Refuse, or (`--drain`) stop it; the
        DrainActor restores it when the run ends, whatever the ending."""
        findings = self._call(self._peers.drain.detect(), 0)
        if not findings:
            return
        if not self._settings.drain:
            message = conflict_message(findings, self._settings.port)
            raise _Stop(ExitReason.PROVIDER_CONFLICT, message)
        drained = self._call(self._peers.drain.drain(findings), self._settings.drain_grace_s)
        if isinstance(drained, DrainFailed):
            raise _Stop(ExitReason.PROVIDER_CONFLICT, drained.reason)
        log.info("drained: %s", ", ".join(finding.name for finding in drained.stopped))

    def _stage1(self) -> _Prepared | None:
        candidates = self._settings.candidates
        self._listener.stage_started(1, len(candidates))
        for rank, model in enumerate(candidates, start=1):
            self._checkpoint()
            prepared, result = self._candidate(rank, model)
            if prepared is not None and result.feasible:
                return prepared
            self._checkpoint()
        return None

    def _candidate(self, rank: int, model: str) -> tuple[_Prepared | None, CellResult]:
        """Stage 1 for one candidate: pre-warm, then one trial at the default knobs but for the
        context (`TuneSettings.stage1_context`)."""
        self._model = model
        knobs = Knobs(
            max_context=self._settings.stage1_context(),
            memory_limit_gb=self._settings.provider_memory_limit_gb,
        )
        started = self._clock()
        prepared = self._prepare(model, knobs)
        prewarm = Timings(prewarm_s=self._clock() - started)
        if isinstance(prepared, CellResult):
            self._time += prewarm
            self._record(1, model, knobs, prepared, TrialOutcome.PREWARM_FAILED, prepared.reason)
            return None, prepared
        total = len(self._settings.candidates)
        replicates = self._settings.stage1_replicates
        result, _ = self._trial(1, rank, total, prepared, knobs, 1, replicates, prewarm)
        return prepared, result

    def _prepare(self, model: str, knobs: Knobs) -> _Prepared | CellResult:
        """The candidate made ready to measure, or why it cannot be (`PREWARM_FAILED`)."""
        try:
            warmed = self._call(self._peers.prewarm.prewarm(model), PREWARM_TIMEOUT_S)
        except PrewarmIntegrityError as error:
            damaged = _unmeasured(str(error))
            self._record(1, model, knobs, damaged, TrialOutcome.INTEGRITY_FAILURE, str(error))
            raise _Stop(ExitReason.PRE_WARM_INTEGRITY_FAILURE, str(error)) from error
        except PrewarmTransientError as error:
            return _unmeasured(f"pre-warm transient: {error.cause}")
        except PrewarmError as error:
            return _unmeasured(f"pre-warm failed: {error}")
        context = self._settings.stage1_context()
        if (refusal := beyond_training(warmed.report.trained_context, context)) is not None:
            return _unmeasured(refusal)
        try:
            tokenizer = load_prompt_tokenizer(warmed.report.folder)
            prompt = build_probe_prompt(tokenizer.count, self._settings.target_context)
        except Exception as error:  # the tokenizer's loader raises anything
            return _unmeasured(f"no probe prompt: {type(error).__name__}: {error}")
        return _Prepared(model, prompt, tokenizer.stop_texts, tokenizer.stop_ids)

    def _stage2(self, chosen: _Prepared) -> None:
        settings = self._settings
        self._stage = 2
        cells = stage2_cells(
            settings.kv_bits_axis, settings.max_batch_axis, settings.max_context_axis
        )
        self._listener.stage_started(2, len(cells))
        for index, cell in enumerate(cells, start=1):
            self._checkpoint()
            knobs = Knobs(
                cell.kv_bits, cell.max_context, cell.max_batch, settings.provider_memory_limit_gb
            )
            replicates = settings.stage2_replicates
            result, trial_id = self._trial(
                2, index, len(cells), chosen, knobs, cell.max_batch, replicates, Timings()
            )
            # An interrupted or budget-cut cell is infeasible and cannot win; a cell completed
            # just before a Ctrl-C still counts.
            best = self._best[1] if self._best is not None else None
            if keeps_best(result, best, settings.tps_tie_epsilon):
                self._best = (cell, result)
                self._call(self._peers.store.set_kept(self._run.run_id, trial_id), 0)
            self._checkpoint()

    # --- one trial ---

    def _trial(
        self,
        stage: Stage,
        index: int,
        total: int,
        prepared: _Prepared,
        knobs: Knobs,
        concurrency: int,
        replicates: int,
        before: Timings,
    ) -> tuple[CellResult, int]:
        """Load, measure, stop, record: one provider, started and stopped within the trial."""
        settings = self._settings
        self._listener.trial_started(stage, index, total, prepared.model, knobs)
        load_at = self._clock()
        load = self._call(
            self._peers.prewarm.load(
                prepared.model, settings.port, knobs, settings.ready_timeout_s
            ),
            settings.ready_timeout_s,
        )
        measure_at = self._clock()
        measured: list[Replicate] = []
        cut = None
        if isinstance(load, Loaded):
            # Stage 1 lets the model stop where it likes (a stop-token leak shows there);
            # Stage 2 bans the stop tokens so every cell generates the same work.
            banned = prepared.stop_ids if stage == 2 else ()
            measured, cut = self._replicates(prepared, concurrency, replicates, banned)
        stop_at = self._clock()
        self._call(self._peers.provider.stop_provider(STOP_GRACE_S), STOP_GRACE_S)
        timings = before + Timings(
            load_s=measure_at - load_at,
            measure_s=stop_at - measure_at,
            stop_s=self._clock() - stop_at,
        )
        self._time += timings
        result, outcome = self._result(load, measured, cut, stage)
        notes = self._notes(load, result)
        trial_id = self._record(
            stage, prepared.model, knobs, result, outcome, notes, prepared.prompt.tokens
        )
        event = TrialEvent(stage, index, total, prepared.model, knobs, result, notes, timings)
        self._listener.trial_finished(event)
        return result, trial_id

    def _replicates(
        self, prepared: _Prepared, concurrency: int, count: int, banned: tuple[int, ...]
    ) -> tuple[list[Replicate], TrialOutcome | None]:
        """Up to `count` replicates; the first failed one ends the cell (it can never win).
        Also why the last one was cut short, if it was: see `measured_outcome`."""
        settings = self._settings
        done: list[Replicate] = []
        for number in range(1, count + 1):
            timeout = min(settings.request_timeout_s, self._budget.remaining(self._clock()))
            if self._cancel.is_set() or timeout <= 0:
                cut = TrialOutcome.OUT_OF_BUDGET
                if self._cancel.is_set():
                    cut = TrialOutcome.INTERRUPTED
                done.append(_failed_replicate(CUT_NOTES[cut]))
                return done, cut
            self._listener.replicate_started(number, count)
            spec = ProbeSpec(
                settings.port,
                prepared.model,
                prepared.prompt.content,
                settings.probe_max_tokens,
                concurrency,
                timeout,
                prepared.stop_texts,
                banned,
            )
            replicate = self._call(self._peers.probe.replicate(spec), timeout)
            exited = self._call(self._peers.provider.check(), 0)
            if exited is not None:
                reason = exited.describe("during measurement")
                replicate = replace(replicate, ok=False, reason=reason)
            done.append(replicate)
            if exited is not None and exited.killed_from_outside:
                return done, TrialOutcome.PROVIDER_KILLED
            if replicate.reason == INTERRUPTED:  # the probe's own word for a Ctrl-C
                return done, TrialOutcome.INTERRUPTED
            if not replicate.ok:
                break
        return done, None

    def _result(
        self,
        load: Loaded | LoadFailed,
        measured: list[Replicate],
        cut: TrialOutcome | None,
        stage: Stage,
    ) -> tuple[CellResult, TrialOutcome]:
        if isinstance(load, LoadFailed):
            return _unmeasured(load.reason), load_outcome(load)
        # Stage 1 is a fit test, with the TTFT gate; Stage 2 ranks what fits.
        gate = self._settings.gate_ttft_ms if stage == 1 else None
        return aggregate(measured, gate), measured_outcome(measured, gate, cut)

    @staticmethod
    def _notes(load: Loaded | LoadFailed, result: CellResult) -> str | None:
        """Why a trial failed (what the reports quote), else its load time."""
        if result.reason is not None:
            return result.reason
        return f"load {load.seconds:.2f} s" if isinstance(load, Loaded) else None

    # --- bookkeeping ---

    def _checkpoint(self) -> None:
        """Before each trial: stop on Ctrl-C, or when the budget is used up."""
        self._stop_if_cancelled()
        if self._budget.exhausted(self._clock()):
            reason = budget_exit_reason(self._stage, self._best is not None)
            limit = self._settings.max_duration_s
            raise _Stop(reason, f"--max-duration {limit:g} s used up in Stage {self._stage}")

    def _stop_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise _Stop(ExitReason.INTERRUPTED, f"interrupted in Stage {self._stage}")

    def _record(
        self,
        stage: Stage,
        model: str,
        knobs: Knobs,
        result: CellResult,
        outcome: TrialOutcome,
        notes: str | None,
        prompt_tokens: int | None = None,
    ) -> int:
        trial = TrialRecord(
            run_id=self._run.run_id,
            stage=stage,
            ts=datetime.now(UTC),
            model=model,
            target_context=self._settings.target_context,
            max_tokens=self._settings.probe_max_tokens,
            outcome=outcome,
            measured_prompt_tokens=prompt_tokens,
            agg_throughput_tps=result.tps_median,
            ttft_p95_ms=result.ttft_p95_ms,
            n_err=result.failed,
            notes=notes,
            kv_bits=cast(KvBits | None, knobs.kv_bits),
            max_context=knobs.max_context,
            max_batch=knobs.max_batch,
            replicates_n=result.replicates,
        )
        return self._call(self._peers.store.record_trial(trial), 0)

    def _finish(self, reason: ExitReason, detail: str | None) -> TuneSummary:
        chosen = self._chosen
        recommendation = None
        if chosen is not None:
            partial = reason is not ExitReason.OK
            target = self._settings.target_context
            recommendation = recommend(chosen.model, target, self._best, partial=partial)
        self._close_run(reason, recommendation)
        return TuneSummary(
            run_id=self._run.run_id,
            exit_reason=reason,
            detail=detail,
            recommendation=recommendation,
            timings=self._time,
        )

    def _close_run(self, reason: ExitReason, recommendation: Recommendation | None) -> None:
        document, recipe = None, None
        if recommendation is not None:
            document = json.dumps(recommendation.as_json())
            run = self._run
            recipe = recipe_hash(
                recommendation,
                binary_version=run.binary_version,
                candidate_models=run.candidate_models,
                chip=run.machine_chip,
                ram_gb=run.machine_ram_gb,
            )
        closing = self._peers.store.finish_run(
            self._run.run_id,
            reason,
            ended_at=datetime.now(UTC),
            recommendation_json=document,
            recipe_hash=recipe,
        )
        self._call(closing, 0)

    @staticmethod
    def _call(future: pykka.Future[_T], bound_s: float) -> _T:
        return future.get(timeout=bound_s + CALL_MARGIN_S)
