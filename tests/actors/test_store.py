"""The autotune database: schema, migration, retention, trials, run closing, crash recovery,
and the StoreActor, all on real SQLite files in `tmp_path`."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store import Store
from macprovider.actors.store_actor import StoreActor, start_store_actor
from macprovider.actors.store_errors import (
    RunAlreadyFinished,
    SchemaMismatch,
    UnknownRun,
    UnknownTrial,
)
from macprovider.actors.store_records import KvBits, RunStart, Stage, TrialRecord
from macprovider.actors.trial_outcome import TrialOutcome
from tests.conftest import ROOT, wait_until

T0 = datetime(2025, 11, 25, 8, 0, tzinfo=UTC)
ACTOR_TIMEOUT = 10.0

# The tables' layout, written out independently of the implementation's schema module.
RUN_COLUMNS = [
    "run_id",
    "started_at_utc",
    "ended_at_utc",
    "spec_version",
    "binary_version",
    "machine_ram_gb",
    "machine_chip",
    "machine_os_version",
    "target_context",
    "candidate_models_json",
    "stage1_replicates",
    "stage2_replicates",
    "gate_ttft_ms",
    "tps_tie_epsilon",
    "recommendation_json",
    "recipe_hash",
    "applied",
    "exit_reason",
    "apply_pending_json",
]
TRIAL_COLUMNS = [
    "id",
    "ts_utc",
    "run_id",
    "stage",
    "model",
    "target_context",
    "measured_prompt_tokens",
    "max_tokens",
    "agg_throughput_tps",
    "ttft_p95_ms",
    "fits",
    "n_err",
    "kept",
    "notes",
    "kv_bits",
    "max_context_cap",
    "max_batch",
    "replicates_n",
    "outcome",
]
KNOB_COLUMNS = ["kv_bits", "max_context_cap", "max_batch", "replicates_n"]
# The TrialRecord fields of KNOB_COLUMNS: the knobs' own names (the table keeps its columns').
KNOB_FIELDS = ["kv_bits", "max_context", "max_batch", "replicates_n"]


def make_run(run_id: str, minutes: int = 0) -> RunStart:
    return RunStart(
        run_id=run_id,
        started_at=T0 + timedelta(minutes=minutes),
        spec_version="0.3",
        binary_version="0.1.0",
        machine_ram_gb=16.0,
        machine_chip="test-chip",
        machine_os_version="test-os 1",
        target_context=2000,
        candidate_models=("fixtures/small", "fixtures/tiny"),
        stage1_replicates=1,
        stage2_replicates=3,
        gate_ttft_ms=60000.0,
        tps_tie_epsilon=0.02,
    )


def make_trial(run_id: str, stage: Stage, kv_bits: KvBits | None = None) -> TrialRecord:
    return TrialRecord(
        run_id=run_id,
        stage=stage,
        ts=T0,
        model="fixtures/tiny",
        target_context=2000,
        max_tokens=64,
        outcome=TrialOutcome.FITS,
        measured_prompt_tokens=2000,
        agg_throughput_tps=12.5,
        ttft_p95_ms=340.0,
        kv_bits=kv_bits,
        max_batch=2 if stage == 2 else None,
        replicates_n=3,
    )


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Reads through a connection of its own, as another process would."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def execute(path: Path, sql: str, *params: Any) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql, params)


def column_names(path: Path, table: str) -> list[str]:
    return [row[1] for row in query(path, f"PRAGMA table_info({table})")]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "autotune.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with closing(Store(db_path)) as opened:
        yield opened


def seed_runs(db_path: Path, runs: dict[str, int], trials_each: int = 2) -> None:
    """Writes runs (id → start minute) with a few trials each, without pruning any."""
    with closing(Store(db_path, retain_runs=1000)) as seeding:
        for run_id, minutes in runs.items():
            seeding.begin_run(make_run(run_id, minutes))
            for _ in range(trials_each):
                seeding.record_trial(make_trial(run_id, stage=1))


# -- schema and migration ----------------------------------------------------------------


def test_new_database_has_the_layout_in_wal_mode(db_path: Path, store: Store) -> None:
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert column_names(db_path, "tune_runs") == RUN_COLUMNS
    assert column_names(db_path, "tune_trials") == TRIAL_COLUMNS
    indexed = [
        query(db_path, f"PRAGMA index_info({name})")[0][2]
        for _, name, *_ in query(db_path, "PRAGMA index_list(tune_trials)")
    ]
    assert "run_id" in indexed
    assert store.integrity_ok()


# Each refused row names the rule it breaks; the Store never writes them, the schema is the
# last line of defence for anyone else writing to the file.
REFUSED_ROWS = {
    "trial without stage": "INSERT INTO tune_trials (ts_utc, run_id, model, target_context,"
    " max_tokens, fits, outcome) VALUES ('t', 'r1', 'm', 1, 1, 1, 'fits')",
    "trial at stage 3": "INSERT INTO tune_trials (ts_utc, run_id, stage, model, target_context,"
    " max_tokens, fits, outcome) VALUES ('t', 'r1', 3, 'm', 1, 1, 1, 'fits')",
    "trial with kv_bits 7": "INSERT INTO tune_trials (ts_utc, run_id, stage, model,"
    " target_context, max_tokens, fits, kv_bits, outcome)"
    " VALUES ('t', 'r1', 1, 'm', 1, 1, 1, 7, 'fits')",
    "trial of an unknown run": "INSERT INTO tune_trials (ts_utc, run_id, stage, model,"
    " target_context, max_tokens, fits, outcome) VALUES ('t', 'nope', 1, 'm', 1, 1, 1, 'fits')",
    "trial without outcome": "INSERT INTO tune_trials (ts_utc, run_id, stage, model,"
    " target_context, max_tokens, fits) VALUES ('t', 'r1', 1, 'm', 1, 1, 1)",
    "trial with an unknown outcome": "INSERT INTO tune_trials (ts_utc, run_id, stage, model,"
    " target_context, max_tokens, fits, outcome) VALUES ('t', 'r1', 1, 'm', 1, 1, 0, 'maybe')",
    "fits that its outcome denies": "INSERT INTO tune_trials (ts_utc, run_id, stage, model,"
    " target_context, max_tokens, fits, outcome)"
    " VALUES ('t', 'r1', 1, 'm', 1, 1, 1, 'load_failed')",
    "exit reason outside the enum": "UPDATE tune_runs SET ended_at_utc = 't',"
    " exit_reason = 'bogus' WHERE run_id = 'r1'",
    "end time without a reason": "UPDATE tune_runs SET ended_at_utc = 't' WHERE run_id = 'r1'",
}


@pytest.mark.parametrize("sql", REFUSED_ROWS.values(), ids=REFUSED_ROWS.keys())
def test_schema_refuses_rows_that_break_its_rules(db_path: Path, store: Store, sql: str) -> None:
    store.begin_run(make_run("r1"))
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(sql)


def test_schema_takes_a_trial_that_keeps_every_rule(db_path: Path, store: Store) -> None:
    """The control for REFUSED_ROWS: each of those breaks one rule, not another one too."""
    store.begin_run(make_run("r1"))
    execute(
        db_path,
        "INSERT INTO tune_trials (ts_utc, run_id, stage, model, target_context, max_tokens,"
        " fits, kv_bits, outcome)"
        " VALUES ('2025-01-01T00:00:00', 'r1', 1, 'm', 1, 1, 0, 8, 'load_failed')",
    )
    [trial] = store.trials("r1")
    assert (trial.record.outcome, trial.record.fits) == (TrialOutcome.LOAD_FAILED, False)


PROTOTYPE_LAYOUTS = {
    "lacks stage only": [c for c in TRIAL_COLUMNS if c != "stage"],
    "lacks stage and the knob columns": [
        c for c in TRIAL_COLUMNS if c != "stage" and c not in KNOB_COLUMNS
    ],
}


def create_prototype(db_path: Path, columns: list[str], rows: int) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    definitions = ", ".join("id INTEGER PRIMARY KEY" if c == "id" else c for c in columns)
    execute(db_path, f"CREATE TABLE tune_trials ({definitions})")
    for i in range(rows):
        values = {
            "ts_utc": f"2024-05-0{i + 1}T10:00:00",  # naive, as a prototype might have written
            "run_id": "proto",
            "model": "fixtures/small",
            "target_context": 2000,
            "measured_prompt_tokens": 1990,
            "max_tokens": 64,
            "agg_throughput_tps": 10.0 + i,
            "ttft_p95_ms": 500.0,
            "fits": 1,
            "n_err": 0,
            "kept": 0,
            "notes": f"prototype row {i}",
        }
        names = [c for c in columns if c in values]
        marks = ", ".join("?" for _ in names)
        sql = f"INSERT INTO tune_trials ({', '.join(names)}) VALUES ({marks})"
        execute(db_path, sql, *(values[c] for c in names))


@pytest.mark.parametrize("columns", PROTOTYPE_LAYOUTS.values(), ids=PROTOTYPE_LAYOUTS.keys())
def test_prototype_table_is_migrated_once_and_keeps_its_rows(
    db_path: Path, columns: list[str]
) -> None:
    create_prototype(db_path, columns, rows=3)
    for _ in range(2):  # the second open must find nothing to do
        with closing(Store(db_path)) as migrated:
            trials = migrated.trials("proto")
            assert migrated.integrity_ok()
        assert column_names(db_path, "tune_trials") == columns + [
            c for c in TRIAL_COLUMNS if c not in columns
        ]
        assert [t.record.stage for t in trials] == [1, 1, 1]
        assert [t.record.notes for t in trials] == [f"prototype row {i}" for i in range(3)]
        assert all(getattr(t.record, f) is None for t in trials for f in KNOB_FIELDS)
        assert trials[0].record.ts == datetime(2024, 5, 1, 10, tzinfo=UTC)


def test_migrated_database_takes_new_runs_with_explicit_stages(db_path: Path) -> None:
    create_prototype(db_path, PROTOTYPE_LAYOUTS["lacks stage only"], rows=2)
    with closing(Store(db_path)) as migrated:
        migrated.begin_run(make_run("new"))
        migrated.record_trial(make_trial("new", stage=2, kv_bits=8))
        assert [t.record.stage for t in migrated.trials("new")] == [2]
        # Prototype trials belong to no run row: retention has no run to age them out by.
        assert len(migrated.trials("proto")) == 2


# (fits, notes) of a row written before the outcome column → the outcome it gets, once.
LEGACY_ROWS = {
    "fits": ((1, "load 1.20 s"), "fits"),
    "Ctrl-C": ((0, "interrupted"), "interrupted"),
    "out of budget": ((0, "out of budget"), "out_of_budget"),
    "damaged files": (
        (0, "pre-warm integrity failure: m: config.json: missing"),
        "integrity_failure",
    ),
    "killed during load": (
        (0, "provider exited during load (killed by a signal): no output"),
        "provider_killed",
    ),
    "died loading": ((0, "provider exited during load (exit 1): out of memory"), "load_failed"),
    "not ready": ((0, "provider not ready within 2 s"), "load_failed"),
    "pre-warm failed": ((0, "pre-warm transient: HTTP 503"), "prewarm_failed"),
    "no probe prompt": ((0, "no probe prompt: OSError: x"), "prewarm_failed"),
    "over the gate": ((0, "TTFT p95 90000 ms exceeds the gate 60000 ms"), "over_ttft_gate"),
    "a bug": ((0, "Traceback (most recent call last):\n  boom"), "internal_error"),
    "anything else that failed": ((0, "HTTP 500: boom"), "measure_failed"),
    "no notes": ((0, None), "measure_failed"),
}


def test_rows_before_the_outcome_column_get_theirs_from_their_notes_once(db_path: Path) -> None:
    columns = [c for c in TRIAL_COLUMNS if c != "outcome"]
    create_prototype(db_path, columns, rows=0)
    for fits, notes in (row for row, _ in LEGACY_ROWS.values()):
        execute(
            db_path,
            "INSERT INTO tune_trials (ts_utc, run_id, stage, model, target_context, max_tokens,"
            " fits, notes) VALUES ('2025-01-01T00:00:00', 'old', 1, 'm', 1, 1, ?, ?)",
            fits,
            notes,
        )
    expected = [TrialOutcome(outcome) for _, outcome in LEGACY_ROWS.values()]
    with closing(Store(db_path)) as migrated:
        assert [t.record.outcome for t in migrated.trials("old")] == expected
    assert column_names(db_path, "tune_trials") == TRIAL_COLUMNS
    assert [TrialOutcome(row[0]) for row in query(db_path, "SELECT outcome FROM tune_trials")] == (
        expected
    )
    # Once: a stored outcome is never derived again, whatever the notes say.
    execute(db_path, "UPDATE tune_trials SET notes = 'interrupted'")
    with closing(Store(db_path)) as reopened:
        assert [t.record.outcome for t in reopened.trials("old")] == expected


def test_table_lacking_an_unknown_column_is_refused_untouched(db_path: Path) -> None:
    create_prototype(db_path, [c for c in TRIAL_COLUMNS if c not in ("stage", "model")], rows=1)
    with pytest.raises(SchemaMismatch, match="model"):
        Store(db_path)
    # The whole migration is one transaction: not even the missing table was created.
    assert query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'") == [
        ("tune_trials",)
    ]


# -- runs and retention ------------------------------------------------------------------

# (existing runs id → start minute, retain_runs, new run's start minute, runs left)
RETENTION_CASES = {
    "fewer runs than the limit": ({"a": 0, "b": 1}, 5, 10, {"a", "b", "new"}),
    "keeps the newest": ({"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}, 3, 10, {"d", "e", "new"}),
    "retain 1 keeps only the new run": ({"a": 0, "b": 1}, 1, 10, {"new"}),
    "new run older than the rest is kept": ({"a": 0, "b": 1, "c": 2}, 2, -5, {"c", "new"}),
    "equal start times: later writes win": ({"a": 0, "b": 0, "c": 0}, 3, 0, {"b", "c", "new"}),
}


@pytest.mark.parametrize(
    ("existing", "retain", "new_minute", "left"),
    RETENTION_CASES.values(),
    ids=RETENTION_CASES.keys(),
)
def test_retention_keeps_the_newest_runs_and_no_orphan_trials(
    db_path: Path, existing: dict[str, int], retain: int, new_minute: int, left: set[str]
) -> None:
    seed_runs(db_path, existing, trials_each=2)
    with closing(Store(db_path, retain_runs=retain)) as pruning:
        pruning.begin_run(make_run("new", new_minute))
        assert {run.start.run_id for run in pruning.runs()} == left
        assert all(len(pruning.trials(run_id)) == 2 for run_id in left - {"new"})
    orphans = query(
        db_path,
        "SELECT COUNT(*) FROM tune_trials WHERE run_id NOT IN (SELECT run_id FROM tune_runs)",
    )
    assert orphans == [(0,)]


@pytest.mark.parametrize("retain", [0, -3])
@pytest.mark.parametrize("opener", [Store, StoreActor.start], ids=["Store", "StoreActor"])
def test_retain_runs_below_one_is_refused_before_any_write(
    db_path: Path, opener: Callable[..., object], retain: int
) -> None:
    with pytest.raises(ValueError, match="retain_runs"):
        opener(db_path, retain_runs=retain)
    assert not db_path.exists()


class InjectedFailure(Exception):
    pass


def fail_in_sqlite(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[Exception]:
    """A trigger aborts the second delete (the runs), after the trials are gone."""
    execute(
        db_path,
        "CREATE TRIGGER injected BEFORE DELETE ON tune_runs BEGIN SELECT RAISE(ABORT, 'x'); END",
    )
    return sqlite3.IntegrityError


def fail_in_python(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[Exception]:
    """The step after the trials delete raises before touching the runs."""

    def fail(self: Store, old: dict[str, Any]) -> None:
        raise InjectedFailure

    monkeypatch.setattr(Store, "_delete_old_runs", fail)
    return InjectedFailure


@pytest.mark.parametrize("inject", [fail_in_sqlite, fail_in_python])
def test_failure_between_the_retention_deletes_rolls_both_back(
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inject: Callable[[Path, pytest.MonkeyPatch], type[Exception]],
) -> None:
    seed_runs(db_path, {"a": 0, "b": 1, "c": 2}, trials_each=3)
    runs_before = query(db_path, "SELECT * FROM tune_runs ORDER BY run_id")
    trials_before = query(db_path, "SELECT * FROM tune_trials ORDER BY id")
    expected = inject(db_path, monkeypatch)
    with closing(Store(db_path, retain_runs=1)) as pruning:
        with pytest.raises(expected):
            pruning.begin_run(make_run("new", 10))
        # Checked while the Store is still open: closing would discard a transaction left
        # dangling, which the next write would otherwise commit, half-deletes included.
        assert query(db_path, "SELECT * FROM tune_trials ORDER BY id") == trials_before
        # The new run's row was committed before retention began, and stays open.
        assert query(db_path, "SELECT * FROM tune_runs WHERE run_id != 'new' ORDER BY run_id") == (
            runs_before
        )
        assert query(db_path, "SELECT ended_at_utc FROM tune_runs WHERE run_id = 'new'") == [
            (None,)
        ]
        # The Store goes on working: the next write is committed on its own.
        new_trial = pruning.record_trial(make_trial("new", stage=1))
        assert query(db_path, "SELECT run_id FROM tune_trials WHERE id = ?", new_trial) == [
            ("new",)
        ]
        assert query(db_path, "SELECT COUNT(*) FROM tune_trials") == [(len(trials_before) + 1,)]


# -- trials ------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "kv_bits"), [(1, None), (2, None), (2, 4), (2, 8)])
def test_trial_is_stored_with_its_stage_and_kv_bits(
    db_path: Path, store: Store, stage: Stage, kv_bits: KvBits | None
) -> None:
    store.begin_run(make_run("r1"))
    trial = make_trial("r1", stage=stage, kv_bits=kv_bits)
    trial_id = store.record_trial(trial)
    # Committed at once: another connection sees the row while the Store stays open.
    assert query(db_path, "SELECT stage, kv_bits FROM tune_trials WHERE id = ?", trial_id) == [
        (stage, kv_bits)
    ]
    [stored] = store.trials("r1")
    assert (stored.id, stored.kept, stored.record) == (trial_id, False, trial)


def test_trial_of_an_unknown_run_is_refused(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.record_trial(make_trial("never-begun", stage=1))


def kept_ids(store: Store, run_id: str) -> list[int]:
    return [t.id for t in store.trials(run_id) if t.kept]


def test_set_kept_leaves_exactly_one_kept_row_in_the_run(store: Store) -> None:
    store.begin_run(make_run("r1"))
    store.begin_run(make_run("other", 1))
    other_winner = store.record_trial(make_trial("other", stage=2))
    store.set_kept("other", other_winner)
    store.record_trial(make_trial("r1", stage=1))
    first, _, last = (store.record_trial(make_trial("r1", stage=2)) for _ in range(3))
    store.set_kept("r1", first)
    store.set_kept("r1", last)
    assert kept_ids(store, "r1") == [last]
    assert kept_ids(store, "other") == [other_winner]


REFUSED_KEPT: dict[str, Callable[[dict[str, int]], int]] = {
    "a stage 1 trial of the run": lambda ids: ids["stage1"],
    "a stage 2 trial of another run": lambda ids: ids["other"],
    "no such trial": lambda ids: 10_000,
}


@pytest.mark.parametrize("pick", REFUSED_KEPT.values(), ids=REFUSED_KEPT.keys())
def test_set_kept_refuses_anything_but_a_stage_2_trial_of_the_run(
    store: Store, pick: Callable[[dict[str, int]], int]
) -> None:
    store.begin_run(make_run("r1"))
    store.begin_run(make_run("other", 1))
    ids = {
        "stage1": store.record_trial(make_trial("r1", stage=1)),
        "winner": store.record_trial(make_trial("r1", stage=2)),
        "other": store.record_trial(make_trial("other", stage=2)),
    }
    store.set_kept("r1", ids["winner"])
    with pytest.raises(UnknownTrial):
        store.set_kept("r1", pick(ids))
    assert kept_ids(store, "r1") == [ids["winner"]]


# -- closing a run -----------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(ExitReason))
def test_finish_run_writes_the_reason_and_outcome(store: Store, reason: ExitReason) -> None:
    store.begin_run(make_run("r1"))
    ended = T0 + timedelta(minutes=30)
    store.finish_run(
        "r1",
        reason,
        ended_at=ended,
        recommendation_json='{"model": "fixtures/tiny"}',
        recipe_hash="sha256:" + "0" * 64,
        applied=True,
    )
    [run] = store.runs()
    assert (run.exit_reason, run.ended_at, run.applied) == (reason, ended, True)
    assert (run.recommendation_json, run.recipe_hash) == (
        '{"model": "fixtures/tiny"}',
        "sha256:" + "0" * 64,
    )
    assert run.start == make_run("r1")


REFUSED_FINISH: dict[str, tuple[str, Any, datetime, type[Exception]]] = {
    "reason outside the enum": ("r1", "bogus", T0, ValueError),
    "unknown run": ("nope", ExitReason.OK, T0, UnknownRun),
    "already finished": ("done", ExitReason.INTERRUPTED, T0, RunAlreadyFinished),
    "naive end time": ("r1", ExitReason.OK, datetime(2025, 1, 1), ValueError),
}


@pytest.mark.parametrize(
    ("run_id", "reason", "ended_at", "error"), REFUSED_FINISH.values(), ids=REFUSED_FINISH.keys()
)
def test_finish_run_refuses_and_changes_nothing(
    db_path: Path,
    store: Store,
    run_id: str,
    reason: Any,
    ended_at: datetime,
    error: type[Exception],
) -> None:
    store.begin_run(make_run("r1"))
    store.begin_run(make_run("done", 1))
    store.finish_run("done", ExitReason.OK, ended_at=T0)
    before = query(db_path, "SELECT * FROM tune_runs ORDER BY run_id")
    with pytest.raises(error):
        store.finish_run(run_id, reason, ended_at=ended_at)
    assert query(db_path, "SELECT * FROM tune_runs ORDER BY run_id") == before


# -- crash recovery ----------------------------------------------------------------------

CRASH_MIN_TRIALS = 200
CRASH_WRITE_TIMEOUT = 60.0


def write_until_killed(db_path: Path) -> None:
    """The crash test's victim: records trials and moves the kept mark, forever."""
    store = Store(db_path)
    store.begin_run(make_run("crashed"))
    while True:
        trial_id = store.record_trial(make_trial("crashed", stage=2))
        store.set_kept("crashed", trial_id)


def trial_count(db_path: Path, writer: subprocess.Popen[bytes]) -> int:
    if writer.poll() is not None:
        raise AssertionError(f"writer exited early with {writer.returncode}")
    if not db_path.exists():  # connecting now would create it under the writer's feet
        return 0
    try:
        return int(query(db_path, "SELECT COUNT(*) FROM tune_trials")[0][0])
    except sqlite3.OperationalError:  # the writer has not created the schema yet
        return 0


def test_kill_9_mid_write_leaves_a_database_that_opens_and_takes_the_next_run(
    db_path: Path,
) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.actors.test_store", str(db_path)], cwd=ROOT
    )
    try:
        wait_until(
            lambda: trial_count(db_path, writer) >= CRASH_MIN_TRIALS,
            CRASH_WRITE_TIMEOUT,
            f"the writer to record {CRASH_MIN_TRIALS} trials",
        )
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL

    with closing(Store(db_path)) as recovered:
        assert recovered.integrity_ok()
        [crashed] = recovered.runs()
        assert (crashed.ended_at, crashed.exit_reason) == (None, None)
        trials = recovered.trials("crashed")
        assert len(trials) >= CRASH_MIN_TRIALS
        assert len([t for t in trials if t.kept]) <= 1
        recovered.begin_run(make_run("next", 1))
        recovered.record_trial(make_trial("next", stage=1))
        assert [run.start.run_id for run in recovered.runs()] == ["crashed", "next"]


# -- the actor ---------------------------------------------------------------------------


@pytest.fixture
def actor_db(db_path: Path) -> Iterator[Path]:
    yield db_path
    pykka.ActorRegistry.stop_all(timeout=ACTOR_TIMEOUT)


def test_store_actor_serves_the_store_through_its_proxy(actor_db: Path) -> None:
    proxy = start_store_actor(actor_db, retain_runs=5)
    proxy.begin_run(make_run("r1")).get(timeout=ACTOR_TIMEOUT)
    trial_id = proxy.record_trial(make_trial("r1", stage=2)).get(timeout=ACTOR_TIMEOUT)
    proxy.set_kept("r1", trial_id).get(timeout=ACTOR_TIMEOUT)
    proxy.finish_run("r1", ExitReason.OK, ended_at=T0).get(timeout=ACTOR_TIMEOUT)
    [trial] = proxy.trials("r1").get(timeout=ACTOR_TIMEOUT)
    assert (trial.id, trial.kept, trial.record.stage) == (trial_id, True, 2)
    assert proxy.integrity_ok().get(timeout=ACTOR_TIMEOUT)
    assert proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)
    # on_stop closed the last connection, which checkpoints and removes the WAL file.
    assert not actor_db.with_name(actor_db.name + "-wal").exists()
    with closing(Store(actor_db)) as reopened:
        assert [run.exit_reason for run in reopened.runs()] == [ExitReason.OK]


def test_store_actor_returns_store_errors_through_the_future(actor_db: Path) -> None:
    proxy = start_store_actor(actor_db)
    with pytest.raises(UnknownRun):
        proxy.finish_run("nope", ExitReason.OK, ended_at=T0).get(timeout=ACTOR_TIMEOUT)
    # The actor survives a refused call.
    assert proxy.runs().get(timeout=ACTOR_TIMEOUT) == []


if __name__ == "__main__":
    write_until_killed(Path(sys.argv[1]))


def test_mark_applied_sets_the_flag_of_that_run_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        first, second = make_run("run-a"), make_run("run-b")
        store.begin_run(first)
        store.begin_run(second)
        store.mark_applied("run-b")
        assert [(run.start.run_id, run.applied) for run in store.runs()] == [
            ("run-a", False),
            ("run-b", True),
        ]
        with pytest.raises(UnknownRun):
            store.mark_applied("run-z")
    finally:
        store.close()
