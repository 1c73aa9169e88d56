"""The Tuner (Stage 1, then Stage 2) end to end over its peers: a real StoreActor on a SQLite
file, a real ProviderActor running the stand-in provider, a real PrewarmActor on the fixture
models, and a scripted ProbeActor whose replicates give exact throughputs and TTFTs.

Every test reads what the run left behind: the `tune_trials` and `tune_runs` rows, the
summary, the probe calls (with the provider that was live at each), the provider logs.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pykka
import pytest
from huggingface_hub import constants

from macprovider.actors.autotune_inputs import TuneSettings
from macprovider.actors.drain import DrainProxy, start_drain_actor
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.messages import RunOutcome
from macprovider.actors.prewarm import PrewarmProxy
from macprovider.actors.probe import ProbeProxy
from macprovider.actors.probe_prompt import PromptTokenizer, load_prompt_tokenizer
from macprovider.actors.provider import ProviderProxy, port_is_free, start_provider_actor
from macprovider.actors.recommendation import Infeasible
from macprovider.actors.store import Store
from macprovider.actors.store_actor import StoreProxy, start_store_actor
from macprovider.actors.store_records import RunStart, StoredRun, StoredTrial
from macprovider.actors.supervisor import SupervisorProxy, start_supervisor
from macprovider.actors.trees import AutotuneJob, AutotuneParts, autotune_tree
from macprovider.actors.trial_outcome import TrialOutcome
from macprovider.actors.tune_events import TuneSummary
from macprovider.actors.tuner import Peers, Tuner
from macprovider.actors.tuning import Cell, Replicate, stage2_cells
from macprovider.cli.run_report import RunReport, build_report, candidate_sizes
from tests.actors.tuner_peers import (
    STANDIN_COMMAND,
    At,
    FakeClock,
    ProbeCall,
    Step,
    cell_at,
    live_standins,
    run_start,
    standin_env,
    start_recording_prewarm,
    start_scripted_probe,
)
from tests.conftest import clean_env, free_port, model_variant

TIMEOUT_S = 30.0  # every future and wait: a wedged actor fails the test instead of hanging it
TARGET = 64  # prompt tokens: small, so the probe prompt builds fast
MAX_TOKENS = 8
STAGE1_CONTEXT = TARGET + MAX_TOKENS
CTX = TARGET + MAX_TOKENS  # the one Stage 2 context cap, unless a test sets an axis
BUDGET_S = 100.0
PAST_THE_BUDGET_S = 1000.0
OOM_LINE = "standin: loading weights: out of memory (needed 812 MiB, 96 MiB free)"
WEIGHTS = "model.safetensors"


# --- replicates ------------------------------------------------------------------------------


def ok(tokens: int, wall_s: float, *ttft_ms: float) -> Replicate:
    """A successful replicate: `tokens / wall_s` tok/s, one TTFT per stream."""
    return Replicate(True, tokens, wall_s, ttft_ms or (100.0,), None, False)


def rate(tps: float, ttft_ms: float = 100.0, streams: int = 1) -> Replicate:
    """A successful replicate of exactly `tps` tok/s over 20 s."""
    tokens = round(tps * 20)
    assert tokens / 20.0 == tps, f"{tps} tok/s is not exact over 20 s"
    return ok(tokens, 20.0, *([ttft_ms] * streams))


def failed(reason: str) -> Replicate:
    return Replicate(False, 0, 0.0, (), reason, False)


FIT = ok(96, 2.0, 150.0)  # a feasible Stage 1 replicate: 48 tok/s, TTFT well under the gate


def s1(model: str) -> At:
    """Where a Stage 1 replicate of `model` lands: default knobs but for the context."""
    return At(model, None, None, STAGE1_CONTEXT)


def at(model: str, kv_bits: int | None, max_batch: int, max_context: int = CTX) -> At:
    return At(model, kv_bits, max_batch, max_context)


def cell(kv_bits: int | None, max_batch: int, max_context: int = CTX) -> Cell:
    return Cell(kv_bits, max_batch, max_context)


def advancing(clock: FakeClock, seconds: float, then: Replicate) -> Step:
    """A replicate during which the clock jumps ahead."""

    def step(_: ProbeCall) -> Replicate:
        clock.advance(seconds)
        return then

    return step


# --- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    """One Tuner's peers and what they recorded."""

    settings: TuneSettings
    run: RunStart
    state_dir: Path
    cancel: threading.Event
    clock: FakeClock
    store: StoreProxy
    provider: ProviderProxy
    prewarm: PrewarmProxy
    probe: ProbeProxy
    drain: DrainProxy
    prewarmed: list[str] = field(default_factory=list)
    calls: list[ProbeCall] = field(default_factory=list)

    def peers(self) -> Peers:
        return Peers(self.store, self.prewarm, self.provider, self.probe, self.drain)

    def tuner(self) -> Tuner:
        return Tuner(self.settings, self.run, self.peers(), self.cancel, clock=self.clock)

    def tune(self) -> TuneSummary:
        return self.tuner().run()

    def trials(self, stage: int | None = None) -> list[StoredTrial]:
        rows = self.store.trials(self.run.run_id).get(timeout=TIMEOUT_S)
        return [row for row in rows if stage is None or row.record.stage == stage]

    def report(self) -> RunReport:
        """The run as every output renders it, built from what the Tuner stored."""
        run = self.stored_run()
        sizes = candidate_sizes(run.start.candidate_models)
        return build_report(run, self.trials(), sizes, Path("autotune.sqlite"))

    def stored_run(self) -> StoredRun:
        runs = self.store.runs().get(timeout=TIMEOUT_S)
        return next(run for run in runs if run.start.run_id == self.run.run_id)

    def provider_logs(self) -> list[Path]:
        logs = self.state_dir / "logs"
        return sorted(logs.iterdir()) if logs.exists() else []

    def calls_at(self, where: At) -> list[ProbeCall]:
        return [call for call in self.calls if call.at == where]

    def assert_no_provider_left(self) -> None:
        assert self.provider.handle().get(timeout=TIMEOUT_S) is None
        assert live_standins() == []
        assert port_is_free(self.settings.port)


MakeRig = Callable[..., Rig]


def settings_for(candidates: Sequence[str], port: int, **overrides: Any) -> TuneSettings:
    base: dict[str, Any] = {
        "target_context": TARGET,
        "kv_bits_axis": (None,),
        "max_batch_axis": (1,),
        "max_context_axis": (CTX,),
        "stage1_replicates": 1,
        "stage2_replicates": 3,
        "max_duration_s": 3600.0,
        "port": port,
        "probe_max_tokens": MAX_TOKENS,
        "ready_timeout_s": 10.0,
        "request_timeout_s": 30.0,
    }
    return TuneSettings(candidates=tuple(candidates), **(base | overrides))


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[MakeRig]:
    """`make_rig(candidates, script, modes=, cache_dir=, clock=, cancel=, **settings)`: the
    Tuner's peers, stopped (and checked for leftovers) afterwards. `modes` maps a model to
    its stand-in's STANDIN_MODE; the probe answers from `script`."""
    started: list[pykka.ActorRef[Any]] = []

    def make(
        candidates: Sequence[str],
        script: Mapping[At, Sequence[Step]],
        *,
        modes: Mapping[str, str] | None = None,
        cache_dir: Path | None = None,
        clock: FakeClock | None = None,
        cancel: threading.Event | None = None,
        **overrides: Any,
    ) -> Rig:
        settings = settings_for(candidates, free_port(), **overrides)
        state_dir = tmp_path / "state"
        cancel = cancel if cancel is not None else threading.Event()
        store = start_store_actor(tmp_path / "autotune.sqlite")
        started.append(store.actor_ref)
        env = clean_env(**standin_env(modes or {}))
        provider = start_provider_actor(state_dir, serve_command=STANDIN_COMMAND, env=env)
        started.append(provider.actor_ref)
        prewarmed: list[str] = []
        prewarm = start_recording_prewarm(
            prewarmed, provider=provider, cancel=cancel, cache_dir=cache_dir
        )
        started.append(prewarm.actor_ref)
        calls: list[ProbeCall] = []
        probe = start_scripted_probe(provider, script, calls)
        started.append(probe.actor_ref)
        drain = start_drain_actor(settings.port)
        started.append(drain.actor_ref)
        return Rig(
            settings=settings,
            run=run_start(f"test-{uuid.uuid4().hex[:8]}", settings),
            state_dir=state_dir,
            cancel=cancel,
            clock=clock if clock is not None else FakeClock(),
            store=store,
            provider=provider,
            prewarm=prewarm,
            probe=probe,
            drain=drain,
            prewarmed=prewarmed,
            calls=calls,
        )

    yield make
    for ref in reversed(started):
        ref.stop(timeout=TIMEOUT_S)
    pykka.ActorRegistry.stop_all()  # a last resort; normally nothing is left to stop
    assert live_standins() == []


@pytest.fixture(scope="module")
def fixture_models(fixtures_dir: Path) -> dict[str, str]:
    """The fixture models by name; their real sizes: tiny < small < medium."""
    return {name: str(fixtures_dir / name) for name in ("tiny", "small", "medium")}


@pytest.fixture(scope="module")
def tiny_tokenizer(fixtures_dir: Path) -> PromptTokenizer:
    return load_prompt_tokenizer(fixtures_dir / "tiny")


def kept_rows(rig: Rig) -> list[StoredTrial]:
    return [row for row in rig.trials() if row.kept]


def knobs_of(row: StoredTrial) -> tuple[int | None, int | None, int | None]:
    return (row.record.kv_bits, row.record.max_batch, row.record.max_context)


def assert_recorded_recommendation(rig: Rig, summary: TuneSummary) -> None:
    """The run row holds the summary's recommendation, as its JSON document."""
    stored = rig.stored_run()
    assert stored.ended_at is not None
    assert stored.exit_reason is summary.exit_reason
    assert summary.recommendation is not None
    assert stored.recommendation_json is not None
    assert json.loads(stored.recommendation_json) == summary.recommendation.as_json()


def assert_no_recommendation(rig: Rig, summary: TuneSummary) -> None:
    stored = rig.stored_run()
    assert stored.ended_at is not None
    assert stored.exit_reason is summary.exit_reason
    assert summary.recommendation is None
    assert stored.recommendation_json is None
    assert kept_rows(rig) == []


# --- 0. a port already taken ----------------------------------------------------------------


def test_a_listener_on_the_port_is_a_provider_conflict_before_anything_starts(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    rig = make_rig([tiny], {})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", rig.settings.port))
        listener.listen()
        summary = rig.tune()

    assert summary.exit_reason is ExitReason.PROVIDER_CONFLICT
    assert summary.detail is not None
    assert f"127.0.0.1:{rig.settings.port}" in summary.detail
    assert_no_recommendation(rig, summary)
    assert rig.trials() == []
    assert rig.prewarmed == []
    assert rig.provider_logs() == []


# --- 1. Stage 2 values and keep-best ---------------------------------------------------------


def test_cell_value_is_the_exact_median_and_a_cell_with_a_failed_replicate_never_wins(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    script: dict[At, list[Step]] = {
        s1(tiny): [FIT],
        # 2.1, 2.0, 2.05 tok/s: the median is 2.05, whatever the order.
        at(tiny, None, 1): [ok(42, 20.0, 90.0), ok(40, 20.0, 80.0), ok(41, 20.0, 85.0)],
        # By far the fastest, but its second replicate failed: infeasible, never kept. The
        # third is never asked for (the first failed replicate ends the cell).
        at(tiny, None, 2): [
            ok(20000, 20.0, 5.0, 5.0),
            failed("HTTP 500: boom"),
            ok(20000, 20.0, 5.0, 5.0),
        ],
        # 1.0, 3.5, 3.0 tok/s: median 3.0 (a mean would be 2.5); beats 2.05 outright.
        at(tiny, 8, 1): [ok(20, 20.0, 70.0), ok(70, 20.0, 75.0), ok(60, 20.0, 72.0)],
        # 2.0 tok/s: below the kept 3.0.
        at(tiny, 8, 2): [rate(2.0, 10.0, 2)] * 3,
    }
    rig = make_rig([tiny], script, kv_bits_axis=(None, 8), max_batch_axis=(1, 2))

    summary = rig.tune()

    rows = rig.trials(2)
    assert [knobs_of(row) for row in rows] == [
        (None, 1, CTX),
        (None, 2, CTX),
        (8, 1, CTX),
        (8, 2, CTX),
    ]
    median, broken, winner, slower = (row.record for row in rows)
    assert (median.agg_throughput_tps, median.ttft_p95_ms, median.fits) == (2.05, 90.0, True)
    assert (median.replicates_n, median.n_err) == (3, 0)
    assert (broken.fits, broken.n_err, broken.replicates_n) == (False, 1, 2)
    assert broken.notes is not None and broken.notes.startswith("HTTP 500: boom")
    assert len(rig.calls_at(at(tiny, None, 2))) == 2
    assert (winner.agg_throughput_tps, winner.ttft_p95_ms, winner.fits) == (3.0, 75.0, True)
    assert (slower.agg_throughput_tps, slower.fits) == (2.0, True)

    assert [knobs_of(row) for row in kept_rows(rig)] == [(8, 1, CTX)]
    assert summary.exit_reason is ExitReason.OK
    recommendation = summary.recommendation
    assert recommendation is not None
    assert (recommendation.model, recommendation.cell) == (tiny, cell(8, 1))
    assert (recommendation.tps_median, recommendation.ttft_p95_ms) == (3.0, 75.0)
    assert (recommendation.replicates, recommendation.partial) == (3, False)
    assert_recorded_recommendation(rig, summary)
    stored = json.loads(rig.stored_run().recommendation_json or "null")
    assert stored["knobs"] == {
        "kv_bits": 8,
        "max_concurrency_override": 1,
        "max_context_override": CTX,
    }


# (tok/s, TTFT ms) of the cells max_batch 1, 2, 3 in that order, and the index of the cell
# that must end up kept, with ε = 0.02.
KEEP_BEST_CASES = {
    # 101 is inside 100's band with the lower TTFT: it wins; 102 is inside 101's band with a
    # higher TTFT: it loses, though the fastest.
    "tie-band-lower-ttft-wins": ([(100.0, 50.0), (101.0, 40.0), (102.0, 45.0)], 1),
    # 110 is above 100 × 1.02: it wins despite a higher TTFT; 99 is far below 110.
    "outright-throughput-wins": ([(100.0, 40.0), (110.0, 90.0), (99.0, 10.0)], 1),
    # An equal TTFT inside the band keeps the incumbent; 50 tok/s is below the band.
    "tie-keeps-the-incumbent": ([(100.0, 40.0), (101.0, 40.0), (50.0, 10.0)], 0),
    # Inside the band the lower TTFT wins even at a lower throughput.
    "tie-band-below-lower-ttft-wins": ([(100.0, 50.0), (98.5, 20.0), (97.0, 60.0)], 1),
}


@pytest.mark.parametrize(
    ("cells", "kept"), list(KEEP_BEST_CASES.values()), ids=list(KEEP_BEST_CASES)
)
def test_keep_best_uses_the_tie_band_then_the_ttft(
    make_rig: MakeRig,
    fixture_models: dict[str, str],
    cells: list[tuple[float, float]],
    kept: int,
) -> None:
    tiny = fixture_models["tiny"]
    order = [cell(None, batch) for batch in (1, 2, 3)]
    script: dict[At, list[Step]] = {s1(tiny): [FIT]}
    for where, (tps, ttft) in zip(order, cells, strict=True):
        script[cell_at(tiny, where)] = [rate(tps, ttft, where.max_batch)] * 3
    rig = make_rig([tiny], script, max_batch_axis=(1, 2, 3), tps_tie_epsilon=0.02)

    summary = rig.tune()

    winner = order[kept]
    assert [knobs_of(row) for row in kept_rows(rig)] == [(None, winner.max_batch, CTX)]
    assert [row.record.agg_throughput_tps for row in rig.trials(2)] == [tps for tps, _ in cells]
    assert summary.exit_reason is ExitReason.OK
    recommendation = summary.recommendation
    assert recommendation is not None
    assert (recommendation.cell, recommendation.partial) == (winner, False)
    assert (recommendation.tps_median, recommendation.ttft_p95_ms) == cells[kept]
    assert_recorded_recommendation(rig, summary)


# --- 2. Stage 2 order and counts, 3. one --no-join provider at a time ------------------------


def test_stage2_runs_every_cell_in_order_at_its_concurrency_with_the_stops_banned(
    make_rig: MakeRig, fixture_models: dict[str, str], tiny_tokenizer: PromptTokenizer
) -> None:
    tiny = fixture_models["tiny"]
    kv_axis, batch_axis, context_axis = (None, 8), (1, 2), (CTX, 2 * CTX)
    cells = stage2_cells(kv_axis, batch_axis, context_axis)
    assert len(cells) == 8
    script: dict[At, list[Step]] = {s1(tiny): [FIT]}
    for number, where in enumerate(cells, start=1):  # each cell faster than the one before
        script[cell_at(tiny, where)] = [rate(float(number), 100.0, where.max_batch)] * 3
    rig = make_rig(
        [tiny],
        script,
        kv_bits_axis=kv_axis,
        max_batch_axis=batch_axis,
        max_context_axis=context_axis,
    )

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.OK
    rows = rig.trials()
    assert [row.record.stage for row in rows] == [1] + [2] * 8
    assert knobs_of(rows[0]) == (None, None, STAGE1_CONTEXT)
    assert [knobs_of(row) for row in rows[1:]] == [
        (where.kv_bits, where.max_batch, where.max_context) for where in cells
    ]
    for number, row in enumerate(rows[1:], start=1):
        record = row.record
        assert (record.model, record.fits, record.replicates_n, record.n_err) == (tiny, True, 3, 0)
        assert record.agg_throughput_tps == float(number)
        assert (record.measured_prompt_tokens, record.max_tokens) == (TARGET, MAX_TOKENS)
    assert [knobs_of(row) for row in kept_rows(rig)] == [(8, 2, 2 * CTX)]

    assert [call.at for call in rig.calls] == [s1(tiny)] + [
        cell_at(tiny, where) for where in cells for _ in range(3)
    ]
    stage1, *stage2 = (call.spec for call in rig.calls)
    assert (stage1.concurrency, stage1.banned_tokens) == (1, ())
    assert tiny_tokenizer.stop_ids != ()
    for call in rig.calls[1:]:
        assert call.spec.concurrency == call.at.max_batch
        assert call.spec.banned_tokens == tiny_tokenizer.stop_ids
    for spec in [stage1, *stage2]:
        assert spec.stop_texts == tiny_tokenizer.stop_texts == ("<|im_end|>",)
        assert (spec.port, spec.model, spec.max_tokens) == (rig.settings.port, tiny, MAX_TOKENS)
        assert spec.prompt == stage1.prompt
    assert tiny_tokenizer.count(stage1.prompt) == TARGET


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_every_provider_runs_no_join_alone_and_none_outlives_the_run(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    medium, tiny = fixture_models["medium"], fixture_models["tiny"]
    script: dict[At, list[Step]] = {
        s1(tiny): [FIT],
        at(tiny, None, 1): [rate(10.0)] * 3,
        at(tiny, None, 2): [rate(12.0, 100.0, 2)] * 3,
    }
    rig = make_rig(
        [medium, tiny], script, modes={medium: "exit-during-load"}, max_batch_axis=(1, 2)
    )

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.OK
    assert len(rig.calls) == 7
    pids: dict[At, set[int]] = {}
    for call in rig.calls:
        assert call.live_providers == 1
        assert call.provider_alive
        assert "--no-join" in call.handle.argv
        assert (call.handle.port, call.handle.model) == (rig.settings.port, call.spec.model)
        pids.setdefault(call.at, set()).add(call.handle.pid)
    assert [len(trial) for trial in pids.values()] == [1, 1, 1]  # one provider per trial
    assert len(set.union(*pids.values())) == 3  # a fresh one for each
    assert all(gone(pid) for pid in set.union(*pids.values()))

    # One log per provider start: medium's failed load, tiny's Stage 1 and its two cells.
    texts = [log.read_text() for log in rig.provider_logs()]
    assert len(texts) == 4
    assert all("no_join=True" in text for text in texts)
    assert sum("mode=exit-during-load" in text for text in texts) == 1
    assert sum("SIGTERM, exiting" in text for text in texts) == 3  # each stopped, not killed
    rig.assert_no_provider_left()


# --- 4. Stage 1 and alternates, 5. all infeasible --------------------------------------------


def test_stage1_passes_a_candidate_that_dies_loading_and_stops_at_the_first_fit(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    medium, small, tiny = (fixture_models[name] for name in ("medium", "small", "tiny"))
    script: dict[At, list[Step]] = {s1(small): [FIT], at(small, None, 1): [rate(10.0)] * 3}
    rig = make_rig([medium, small, tiny], script, modes={medium: "exit-during-load"})

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.OK
    dead, fit = (row.record for row in rig.trials(1))
    assert (dead.model, dead.fits, dead.n_err, dead.replicates_n) == (medium, False, 1, 0)
    assert dead.agg_throughput_tps is None
    assert dead.notes == f"provider exited during load (exit 1): {OOM_LINE}"
    assert (fit.model, fit.fits) == (small, True)
    assert rig.report().infeasible == (Infeasible(medium, 1, dead.notes),)
    assert summary.recommendation is not None and summary.recommendation.model == small
    # tiny (smaller than small by its real header size) is named, never pre-warmed nor probed.
    assert rig.report().alternates == (tiny,)
    assert rig.prewarmed == [medium, small]
    assert {call.at.model for call in rig.calls} == {small}
    assert all(f"model={tiny} " not in log.read_text() for log in rig.provider_logs())
    rig.assert_no_provider_left()


def test_a_provider_killed_from_outside_while_loading_is_no_verdict_on_its_model(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    medium, small = fixture_models["medium"], fixture_models["small"]
    script: dict[At, list[Step]] = {s1(small): [FIT], at(small, None, 1): [rate(10.0)] * 3}
    rig = make_rig([medium, small], script, modes={medium: "killed-during-load"})

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.OK
    killed, fit = (row.record for row in rig.trials(1))
    assert (killed.model, killed.outcome, killed.fits) == (
        medium,
        TrialOutcome.PROVIDER_KILLED,
        False,
    )
    assert killed.notes is not None
    assert killed.notes.startswith("provider exited during load (killed by SIGKILL): ")
    assert (fit.model, fit.outcome) == (small, TrialOutcome.FITS)
    assert rig.report().infeasible == ()  # not "does not fit": nothing is known about it
    rig.assert_no_provider_left()


def test_no_alternates_when_the_first_fit_is_smaller_than_what_follows(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny, small = fixture_models["tiny"], fixture_models["small"]
    script: dict[At, list[Step]] = {s1(tiny): [FIT], at(tiny, None, 1): [rate(10.0)] * 3}
    rig = make_rig([tiny, small], script)

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.OK
    assert rig.report().alternates == ()  # small is listed after tiny, but it is bigger
    assert rig.report().infeasible == ()
    assert rig.prewarmed == [tiny]
    assert {row.record.model for row in rig.trials()} == {tiny}


def test_all_infeasible_is_no_feasible_with_the_smallest_candidate_first(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny, small, medium = (fixture_models[name] for name in ("tiny", "small", "medium"))
    script: dict[At, list[Step]] = {
        s1(small): [failed("HTTP 500: internal error")],
        s1(tiny): [ok(96, 2.0, 90000.0)],  # over the 60 s TTFT gate
    }
    rig = make_rig([small, medium, tiny], script, modes={medium: "exit-during-load"})

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.NO_FEASIBLE
    assert summary.detail == f"no candidate fits at {TARGET} context tokens"
    assert_no_recommendation(rig, summary)
    assert rig.report().alternates == ()
    assert [(row.record.model, row.record.fits) for row in rig.trials()] == [
        (small, False),
        (medium, False),
        (tiny, False),
    ]
    assert [row.record.outcome for row in rig.trials()] == [
        TrialOutcome.MEASURE_FAILED,
        TrialOutcome.LOAD_FAILED,
        TrialOutcome.OVER_TTFT_GATE,
    ]
    assert rig.prewarmed == [small, medium, tiny]
    assert rig.report().infeasible == (
        Infeasible(tiny, 3, "TTFT p95 90000 ms exceeds the gate 60000 ms"),
        Infeasible(small, 1, "HTTP 500: internal error"),
        Infeasible(medium, 2, f"provider exited during load (exit 1): {OOM_LINE}"),
    )
    rig.assert_no_provider_left()


# --- 6. budget -------------------------------------------------------------------------------


def test_budget_used_up_in_stage1_selects_no_model(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny, small = fixture_models["tiny"], fixture_models["small"]
    clock = FakeClock()
    script: dict[At, list[Step]] = {s1(tiny): [advancing(clock, PAST_THE_BUDGET_S, FIT)]}
    rig = make_rig([tiny, small], script, clock=clock, stage1_replicates=2, max_duration_s=BUDGET_S)

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.BUDGET_EXHAUSTED_NO_MODEL_SELECTED
    assert summary.detail == "--max-duration 100 s used up in Stage 1"
    assert_no_recommendation(rig, summary)
    (row,) = rig.trials()
    record = row.record
    assert (record.model, record.fits, record.n_err, record.replicates_n) == (tiny, False, 1, 2)
    assert record.notes is not None and record.notes.startswith("out of budget")
    assert len(rig.calls) == 1  # no replicate is asked for past the budget
    assert rig.prewarmed == [tiny]
    rig.assert_no_provider_left()


def test_budget_used_up_in_stage2_after_a_kept_cell_is_a_partial_recommendation(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    clock = FakeClock()
    script: dict[At, list[Step]] = {
        s1(tiny): [FIT],
        at(tiny, None, 1): [rate(10.0, 80.0)] * 3,
        at(tiny, None, 2): [advancing(clock, PAST_THE_BUDGET_S, rate(50.0, 100.0, 2))],
    }
    rig = make_rig([tiny], script, clock=clock, max_batch_axis=(1, 2, 3), max_duration_s=BUDGET_S)

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION
    assert summary.detail == "--max-duration 100 s used up in Stage 2"
    recommendation = summary.recommendation
    assert recommendation is not None
    assert (recommendation.model, recommendation.cell) == (tiny, cell(None, 1))
    assert (recommendation.tps_median, recommendation.ttft_p95_ms) == (10.0, 80.0)
    assert recommendation.partial
    assert_recorded_recommendation(rig, summary)
    rows = rig.trials(2)
    assert [knobs_of(row) for row in rows] == [(None, 1, CTX), (None, 2, CTX)]
    cut = rows[1].record
    assert (cut.fits, cut.n_err, cut.replicates_n) == (False, 1, 2)
    assert cut.notes is not None and cut.notes.startswith("out of budget")
    assert [knobs_of(row) for row in kept_rows(rig)] == [(None, 1, CTX)]
    assert rig.calls_at(at(tiny, None, 3)) == []
    assert len(rig.provider_logs()) == 3  # Stage 1 and two cells: the third never started
    rig.assert_no_provider_left()


def test_budget_used_up_before_any_stage2_cell_finished_selects_no_model(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    clock = FakeClock()
    script: dict[At, list[Step]] = {
        s1(tiny): [FIT],
        at(tiny, None, 1): [advancing(clock, PAST_THE_BUDGET_S, rate(10.0))],
    }
    rig = make_rig([tiny], script, clock=clock, max_batch_axis=(1, 2), max_duration_s=BUDGET_S)

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.BUDGET_EXHAUSTED_NO_MODEL_SELECTED
    assert summary.detail == "--max-duration 100 s used up in Stage 2"
    assert_no_recommendation(rig, summary)
    assert rig.report().alternates == ()
    (row,) = rig.trials(2)
    assert (knobs_of(row), row.record.fits, row.record.replicates_n) == ((None, 1, CTX), False, 2)
    assert rig.calls_at(at(tiny, None, 2)) == []
    rig.assert_no_provider_left()


def test_a_replicate_is_never_given_more_time_than_the_budget_has_left(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    clock = FakeClock()
    script: dict[At, list[Step]] = {
        s1(tiny): [advancing(clock, 95.0, FIT), FIT],
        at(tiny, None, 1): [advancing(clock, 10.0, rate(10.0))],
    }
    rig = make_rig(
        [tiny],
        script,
        clock=clock,
        stage1_replicates=2,
        max_batch_axis=(1, 2),
        max_duration_s=BUDGET_S,
        request_timeout_s=30.0,
    )

    summary = rig.tune()

    # 30 s while the budget has more; then the 5 s it has left; then nothing at all.
    assert [call.spec.timeout_s for call in rig.calls] == [30.0, 5.0, 5.0]
    assert summary.exit_reason is ExitReason.BUDGET_EXHAUSTED_NO_MODEL_SELECTED
    rig.assert_no_provider_left()


def test_budget_used_up_in_the_last_stage2_cell_is_still_a_partial_recommendation(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    clock = FakeClock()
    script: dict[At, list[Step]] = {
        s1(tiny): [FIT],
        at(tiny, None, 1): [rate(10.0)] * 3,
        at(tiny, None, 2): [advancing(clock, PAST_THE_BUDGET_S, rate(50.0, 100.0, 2))],
    }
    rig = make_rig([tiny], script, clock=clock, max_batch_axis=(1, 2), max_duration_s=BUDGET_S)

    summary = rig.tune()

    # The (None, 2) cell was cut short by the budget: the search did not finish.
    cut = rig.trials(2)[-1].record
    assert (cut.max_batch, cut.fits, cut.replicates_n) == (2, False, 2)
    assert cut.notes is not None and cut.notes.startswith("out of budget")
    assert summary.recommendation is not None
    assert summary.exit_reason is ExitReason.BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION
    assert summary.recommendation.partial
    assert rig.stored_run().exit_reason is summary.exit_reason


def test_budget_used_up_in_the_last_candidate_selects_no_model(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    clock = FakeClock()
    script: dict[At, list[Step]] = {s1(tiny): [advancing(clock, PAST_THE_BUDGET_S, FIT)]}
    rig = make_rig([tiny], script, clock=clock, stage1_replicates=2, max_duration_s=BUDGET_S)

    summary = rig.tune()

    # tiny was never measured to the end: it is not known to be infeasible.
    (row,) = rig.trials()
    assert (row.record.fits, row.record.replicates_n) == (False, 2)
    assert row.record.notes is not None and row.record.notes.startswith("out of budget")
    assert summary.exit_reason is ExitReason.BUDGET_EXHAUSTED_NO_MODEL_SELECTED
    assert rig.stored_run().exit_reason is summary.exit_reason


# --- 7. Ctrl-C -------------------------------------------------------------------------------


def interrupting(cancel: threading.Event, then: Replicate) -> Step:
    """A replicate during which Ctrl-C sets the cancel event."""

    def step(_: ProbeCall) -> Replicate:
        cancel.set()
        return then

    return step


def test_ctrl_c_in_stage2_records_the_trial_in_flight_and_keeps_the_best_so_far(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    cancel = threading.Event()
    script: dict[At, list[Step]] = {
        s1(tiny): [FIT],
        at(tiny, None, 1): [rate(10.0, 80.0)] * 3,
        # Much faster, but interrupted after its first replicate: it must not win.
        at(tiny, None, 2): [interrupting(cancel, rate(500.0, 10.0, 2))],
    }
    rig = make_rig([tiny], script, cancel=cancel, max_batch_axis=(1, 2, 3))

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.INTERRUPTED
    assert summary.detail == "interrupted in Stage 2"
    rows = rig.trials(2)
    assert [knobs_of(row) for row in rows] == [(None, 1, CTX), (None, 2, CTX)]
    in_flight = rows[1].record
    assert (in_flight.fits, in_flight.n_err, in_flight.replicates_n) == (False, 1, 2)
    assert in_flight.notes is not None and in_flight.notes.startswith("interrupted")
    assert [knobs_of(row) for row in kept_rows(rig)] == [(None, 1, CTX)]
    recommendation = summary.recommendation
    assert recommendation is not None
    assert (recommendation.cell, recommendation.partial) == (cell(None, 1), True)
    assert_recorded_recommendation(rig, summary)
    (interrupted,) = rig.calls_at(at(tiny, None, 2))
    assert rig.calls_at(at(tiny, None, 3)) == []
    assert gone(interrupted.handle.pid)
    rig.assert_no_provider_left()


def test_ctrl_c_after_a_cell_finished_measuring_still_lets_that_cell_win(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]
    cancel = threading.Event()
    fast = rate(500.0, 10.0, 2)
    script: dict[At, list[Step]] = {
        s1(tiny): [FIT],
        at(tiny, None, 1): [rate(10.0)] * 3,
        # Ctrl-C lands during the last replicate, which still completes (as a real probe's
        # does when the signal comes just after its last stream ended).
        at(tiny, None, 2): [fast, fast, interrupting(cancel, fast)],
    }
    rig = make_rig([tiny], script, cancel=cancel, max_batch_axis=(1, 2, 3))

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.INTERRUPTED
    finished = rig.trials(2)[-1].record
    assert (finished.max_batch, finished.fits, finished.agg_throughput_tps) == (2, True, 500.0)
    assert [knobs_of(row) for row in kept_rows(rig)] == [(None, 2, CTX)]
    assert summary.recommendation is not None
    assert summary.recommendation.cell == cell(None, 2)


def test_ctrl_c_in_stage1_records_the_candidate_and_tries_no_other(
    make_rig: MakeRig, fixture_models: dict[str, str]
) -> None:
    small, tiny = fixture_models["small"], fixture_models["tiny"]
    cancel = threading.Event()
    script: dict[At, list[Step]] = {s1(small): [interrupting(cancel, FIT)]}
    rig = make_rig([small, tiny], script, cancel=cancel, stage1_replicates=2)

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.INTERRUPTED
    assert_no_recommendation(rig, summary)
    (row,) = rig.trials()
    assert (row.record.model, row.record.fits, row.record.replicates_n) == (small, False, 2)
    assert row.record.notes is not None and row.record.notes.startswith("interrupted")
    assert rig.prewarmed == [small]
    rig.assert_no_provider_left()


# --- 8. pre-warm failures --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing-tokenizer", "truncated-weights"])
def test_a_prewarm_integrity_failure_is_recorded_then_aborts_the_run(
    make_rig: MakeRig, fixture_models: dict[str, str], tmp_path: Path, damage: str
) -> None:
    tiny = Path(fixture_models["tiny"])
    if damage == "missing-tokenizer":
        broken = model_variant(tiny, tmp_path / "broken", {})
        (broken / "tokenizer.json").unlink()
        expected = f"pre-warm integrity failure: {broken}: tokenizer.json: missing"
    else:
        truncated = (tiny / WEIGHTS).read_bytes()[:-9]
        broken = model_variant(tiny, tmp_path / "broken", {WEIGHTS: truncated})
        expected = f"pre-warm integrity failure: {broken}: {WEIGHTS}: truncated"
    rig = make_rig([str(broken), str(tiny)], {})  # nothing may be probed

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.PRE_WARM_INTEGRITY_FAILURE
    assert summary.detail is not None and summary.detail.startswith(expected)
    assert_no_recommendation(rig, summary)
    (row,) = rig.trials()
    record = row.record
    assert (record.stage, record.model, record.fits, record.n_err) == (1, str(broken), False, 1)
    assert record.notes == summary.detail
    assert rig.prewarmed == [str(broken)]
    assert rig.calls == []
    assert rig.provider_logs() == []  # no provider was ever started
    assert rig.report().infeasible == ()


def test_a_transient_or_unclassified_prewarm_failure_passes_to_the_next_candidate(
    make_rig: MakeRig,
    fixture_models: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real fetch against a closed loopback port (HF_ENDPOINT), never a real hub."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    endpoint = f"http://127.0.0.1:{free_port()}"
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    uncached, nowhere, tiny = "nobody/not-cached", "/no/such/model-dir", fixture_models["tiny"]
    script: dict[At, list[Step]] = {s1(tiny): [FIT], at(tiny, None, 1): [rate(10.0)] * 3}
    rig = make_rig([uncached, nowhere, tiny], script, cache_dir=cache)

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.OK
    assert summary.recommendation is not None and summary.recommendation.model == tiny
    first, second, third = (row.record for row in rig.trials(1))
    assert (first.model, first.fits, second.model, second.fits) == (
        uncached,
        False,
        nowhere,
        False,
    )
    assert first.notes is not None and first.notes.startswith("pre-warm transient: ")
    assert "Connection refused" in first.notes
    assert second.notes is not None and second.notes.startswith("pre-warm failed: ")
    assert (third.model, third.fits) == (tiny, True)
    assert rig.prewarmed == [uncached, nowhere, tiny]
    assert rig.report().infeasible == (
        Infeasible(uncached, 1, first.notes),
        Infeasible(nowhere, 2, second.notes),
    )
    assert len(rig.provider_logs()) == 2  # tiny's Stage 1 and its one cell


def test_a_candidate_trained_shorter_than_stage1s_context_is_not_measured(
    make_rig: MakeRig, fixture_models: dict[str, str], tmp_path: Path
) -> None:
    tiny = Path(fixture_models["tiny"])
    config = json.loads((tiny / "config.json").read_text()) | {"max_position_embeddings": 64}
    short = model_variant(tiny, tmp_path / "short", {"config.json": json.dumps(config).encode()})
    script: dict[At, list[Step]] = {s1(str(tiny)): [FIT], at(str(tiny), None, 1): [rate(10.0)] * 3}
    rig = make_rig([str(short), str(tiny)], script)

    summary = rig.tune()

    assert summary.exit_reason is ExitReason.OK
    refused, fit = (row.record for row in rig.trials(1))
    assert (refused.model, refused.outcome, refused.fits) == (
        str(short),
        TrialOutcome.PREWARM_FAILED,
        False,
    )
    assert refused.notes is not None and refused.notes.startswith("trained for 64 tokens, below")
    assert fit.model == str(tiny) and fit.fits
    assert len(rig.provider_logs()) == 2  # no provider for the short model: tiny's two trials


# --- 9. the TunerActor under the real Supervisor ---------------------------------------------


@dataclass
class Supervised:
    outcome: RunOutcome
    events: list[str]
    summaries: list[TuneSummary]
    actors: dict[str, Any]
    run: RunStart
    settings: TuneSettings
    db: Path

    def stored(self) -> tuple[StoredRun, list[StoredTrial]]:
        store = Store(self.db)
        try:
            (run,) = store.runs()
            return run, store.trials(self.run.run_id)
        finally:
            store.close()


ScriptFor = Callable[[SupervisorProxy, threading.Event], Mapping[At, Sequence[Step]]]


def run_supervised(
    tmp_path: Path, candidates: Sequence[str], script_for: ScriptFor, **overrides: Any
) -> Supervised:
    """The real autotune tree (`actors/trees.py`, finalizers and all) with a scripted probe
    and a stand-in provider, run to the end; the probe's script may reach the supervisor
    and the cancel event."""
    settings = settings_for(candidates, free_port(), **overrides)
    run = run_start(f"test-{uuid.uuid4().hex[:8]}", settings)
    db = tmp_path / "autotune.sqlite"
    events: list[str] = []
    summaries: list[TuneSummary] = []
    outcomes: list[RunOutcome] = []
    done = threading.Event()

    def report(summary: TuneSummary) -> None:
        events.append(f"report {summary.exit_reason.value}")
        summaries.append(summary)

    def finished(outcome: RunOutcome) -> None:
        events.append(f"finished {outcome.reason}")
        outcomes.append(outcome)
        done.set()

    def probe(
        supervisor: SupervisorProxy, provider: ProviderProxy, cancel: threading.Event
    ) -> ProbeProxy:
        return start_scripted_probe(provider, script_for(supervisor, cancel), [])

    env = clean_env(**standin_env({}))
    job = AutotuneJob(settings, run, db, tmp_path / "state", env, serve_command=STANDIN_COMMAND)
    parts = AutotuneParts(
        prewarm=lambda provider, cancel: start_recording_prewarm(
            [], provider=provider, cancel=cancel
        ),
        probe=probe,
        clock=FakeClock(),
    )
    tree = autotune_tree(job, on_summary=report, parts=parts)
    start_supervisor(tree.children, finished)
    try:
        assert done.wait(TIMEOUT_S), "the supervisor never finished"
    finally:
        if not done.is_set():
            pykka.ActorRegistry.stop_all()
    return Supervised(outcomes[0], events, summaries, tree.actors, run, settings, db)


def plain(script: Mapping[At, Sequence[Step]]) -> ScriptFor:
    return lambda _supervisor, _cancel: script


@pytest.mark.parametrize("feasible", [True, False], ids=["ok", "no-feasible"])
def test_the_tuner_actor_reports_its_summary_then_ends_the_run_with_its_exit_reason(
    tmp_path: Path, fixture_models: dict[str, str], feasible: bool
) -> None:
    tiny = fixture_models["tiny"]
    stage1 = FIT if feasible else failed("HTTP 500: internal error")
    script: dict[At, list[Step]] = {s1(tiny): [stage1], at(tiny, None, 1): [rate(10.0)] * 3}

    result = run_supervised(tmp_path, [tiny], plain(script))

    reason = ExitReason.OK if feasible else ExitReason.NO_FEASIBLE
    assert result.outcome == RunOutcome(reason.value)
    assert result.events == [f"report {reason.value}", f"finished {reason.value}"]
    (summary,) = result.summaries
    assert summary.exit_reason is reason
    assert (summary.recommendation is not None) is feasible
    for proxy in result.actors.values():
        assert not proxy.actor_ref.is_alive()
    assert live_standins() == []
    assert port_is_free(result.settings.port)
    stored, _ = result.stored()
    assert stored.exit_reason is reason
    document = None if summary.recommendation is None else summary.recommendation.as_json()
    assert json.loads(stored.recommendation_json or "null") == document


def test_a_tuner_crash_is_recorded_and_ends_the_run_as_internal_error(
    tmp_path: Path, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]

    def explode(_: ProbeCall) -> Replicate:
        raise RuntimeError("probe exploded")

    script: dict[At, list[Step]] = {s1(tiny): [FIT], at(tiny, None, 1): [explode]}

    result = run_supervised(tmp_path, [tiny], plain(script))

    assert result.outcome == RunOutcome("internal_error", "tuner: RuntimeError: probe exploded")
    assert result.summaries == []
    stored, trials = result.stored()
    assert stored.exit_reason is ExitReason.INTERNAL_ERROR and stored.ended_at is not None
    assert stored.recommendation_json is None
    crash = trials[-1].record
    assert (crash.stage, crash.model, crash.fits) == (2, tiny, False)
    assert crash.notes is not None
    assert "Traceback" in crash.notes and "RuntimeError: probe exploded" in crash.notes
    assert live_standins() == []  # the Supervisor stopped the provider the tuner left running
    assert port_is_free(result.settings.port)


def test_ctrl_c_through_the_supervisor_winds_the_tuner_down_first(
    tmp_path: Path, fixture_models: dict[str, str]
) -> None:
    tiny = fixture_models["tiny"]

    def script_for(
        supervisor: SupervisorProxy, cancel: threading.Event
    ) -> Mapping[At, Sequence[Step]]:
        def ctrl_c(_: ProbeCall) -> Replicate:
            # What the main thread does on SIGINT; the Supervisor's first act is to set the
            # cancel event (the tuner's finalize), which this replicate then reports.
            supervisor.shutdown(ExitReason.INTERRUPTED.value)
            assert cancel.wait(TIMEOUT_S), "the Supervisor never set the cancel event"
            return rate(500.0, 10.0, 2)

        return {
            s1(tiny): [FIT],
            at(tiny, None, 1): [rate(10.0)] * 3,
            at(tiny, None, 2): [ctrl_c],
        }

    result = run_supervised(tmp_path, [tiny], script_for, max_batch_axis=(1, 2, 3))

    assert result.outcome == RunOutcome("interrupted")
    assert result.events == ["report interrupted", "finished interrupted"]
    (summary,) = result.summaries
    assert summary.exit_reason is ExitReason.INTERRUPTED
    assert summary.recommendation is not None and summary.recommendation.partial
    stored, trials = result.stored()
    assert stored.exit_reason is ExitReason.INTERRUPTED
    assert [knobs_of(row) for row in trials if row.record.stage == 2] == [
        (None, 1, CTX),
        (None, 2, CTX),
    ]
    in_flight = trials[-1].record
    assert in_flight.notes is not None and in_flight.notes.startswith("interrupted")
    assert live_standins() == []
    assert port_is_free(result.settings.port)
