"""The autotune database (DESIGN §6): a plain `Store` over one SQLite connection, and the
`StoreActor` that owns it on its own thread as the only writer (DESIGN §3).

The Store holds the logic and is testable without threads; the actor only delegates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors import _schema
from macprovider.actors.autotune_inputs import DEFAULT_RETAIN_RUNS
from macprovider.actors.exit_reasons import ExitReason

log = logging.getLogger("macprovider.actors.store")

BUSY_TIMEOUT_S: Final = 5.0

Stage = Literal[1, 2]
KvBits = Literal[4, 8]


class StoreError(Exception):
    """Base of the errors the Store raises on purpose."""


class SchemaMismatch(StoreError):
    """An existing table lacks columns that no known older layout explains."""


class UnknownRun(StoreError):
    """No run row has this id."""


class RunAlreadyFinished(StoreError):
    """The run row is already closed; its exit reason is final."""


class UnknownTrial(StoreError):
    """The run has no Stage 2 trial with this id."""


class StoreUnavailable(StoreError):
    """The database cannot be opened or written: read-only, locked, on a full disk. The
    message is one line naming the file and the reason; nothing was half-written."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write the autotune database {path}: {reason}")


def _unavailable_reason(error: sqlite3.OperationalError | OSError) -> str:
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        return f"{reason}: {error.filename}" if error.filename else reason
    reason = str(error)
    if "locked" in reason:  # SQLite says only "database is locked"
        return f"{reason} by another writer for more than {BUSY_TIMEOUT_S:g} s"
    return reason


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """What SQLite or the file system refuse (not a broken rule: IntegrityError stays
    itself) becomes StoreUnavailable."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as error:
        raise StoreUnavailable(path, _unavailable_reason(error)) from error


@dataclass(frozen=True)
class RunStart:
    """What a run records about itself when it starts (one `tune_runs` row)."""

    run_id: str
    started_at: datetime  # timezone-aware
    spec_version: str
    binary_version: str
    machine_ram_gb: float
    machine_chip: str
    machine_os_version: str
    target_context: int
    candidate_models: tuple[str, ...]
    stage1_replicates: int
    stage2_replicates: int
    gate_ttft_ms: float
    tps_tie_epsilon: float


@dataclass(frozen=True)
class TrialRecord:
    """One measured (or failed) trial (one `tune_trials` row)."""

    run_id: str
    stage: Stage  # no default: every row states its stage
    ts: datetime  # timezone-aware
    model: str
    target_context: int
    max_tokens: int
    fits: bool
    measured_prompt_tokens: int | None = None
    agg_throughput_tps: float | None = None
    ttft_p95_ms: float | None = None
    n_err: int = 0
    notes: str | None = None
    kv_bits: KvBits | None = None  # None: unquantized
    max_context_cap: int | None = None  # None: the provider's default
    max_batch: int | None = None  # None: the provider's default
    replicates_n: int | None = None


@dataclass(frozen=True)
class PendingApply:
    """`--apply` was about to write these bytes (by their sha256) to this config."""

    config_path: str
    sha256: str

    def landed(self) -> bool:
        """Whether the config holds exactly those bytes now, i.e. the write happened."""
        try:
            data = Path(self.config_path).read_bytes()
        except OSError:
            return False
        return hashlib.sha256(data).hexdigest() == self.sha256


@dataclass(frozen=True)
class StoredRun:
    start: RunStart
    ended_at: datetime | None  # None while open, or after a crash
    exit_reason: ExitReason | None
    recommendation_json: str | None
    recipe_hash: str | None
    # True once the config was rewritten, including by an apply whose process was killed
    # between the write and recording it (its pending record is resolved on reading).
    applied: bool


@dataclass(frozen=True)
class StoredTrial:
    id: int
    kept: bool
    record: TrialRecord


_RUN_INSERT_COLUMNS: Final = (
    "run_id",
    "started_at_utc",
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
)

_TRIAL_INSERT_COLUMNS: Final = (
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
)

# Runs beyond the newest `keep_others` others, never the run being started. Both retention
# deletes use this same query inside one transaction, so they agree on the set.
_OLD_RUNS: Final = """
    SELECT run_id FROM tune_runs WHERE run_id != :current
    ORDER BY started_at_utc DESC, rowid DESC LIMIT -1 OFFSET :keep_others
"""


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{column}" for column in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"


def _utc_text(moment: datetime) -> str:
    # A fixed-width UTC form, so text order is time order (retention sorts on it).
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass a timezone-aware one")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _utc_moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    # Prototype-era rows may carry naive stamps; they were UTC too.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _checked_retain_runs(retain_runs: int) -> int:
    if retain_runs < 1:
        raise ValueError(f"retain_runs must be at least 1, got {retain_runs}")
    return retain_runs


def _migrate(conn: sqlite3.Connection) -> None:
    """Creates what is missing and adds the columns an older table lacks; idempotent."""
    for table in _schema.TABLES:
        conn.execute(table.create_sql())
        _add_missing_columns(conn, table)
    for index in _schema.INDEXES:
        conn.execute(index)


def _add_missing_columns(conn: sqlite3.Connection, table: _schema.Table) -> None:
    present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table.name})")}
    missing = [name for name, _ in table.columns if name not in present]
    unexplained = [name for name in missing if name not in table.addable]
    if unexplained:
        raise SchemaMismatch(
            f"table {table.name} lacks {', '.join(unexplained)}: not a layout this version knows"
        )
    for name in missing:
        conn.execute(f"ALTER TABLE {table.name} ADD COLUMN {name} {table.addable[name]}")


def _run_params(run: RunStart) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "started_at_utc": _utc_text(run.started_at),
        "spec_version": run.spec_version,
        "binary_version": run.binary_version,
        "machine_ram_gb": run.machine_ram_gb,
        "machine_chip": run.machine_chip,
        "machine_os_version": run.machine_os_version,
        "target_context": run.target_context,
        "candidate_models_json": json.dumps(list(run.candidate_models)),
        "stage1_replicates": run.stage1_replicates,
        "stage2_replicates": run.stage2_replicates,
        "gate_ttft_ms": run.gate_ttft_ms,
        "tps_tie_epsilon": run.tps_tie_epsilon,
    }


def _trial_params(trial: TrialRecord) -> dict[str, Any]:
    return {
        "ts_utc": _utc_text(trial.ts),
        "run_id": trial.run_id,
        "stage": trial.stage,
        "model": trial.model,
        "target_context": trial.target_context,
        "measured_prompt_tokens": trial.measured_prompt_tokens,
        "max_tokens": trial.max_tokens,
        "agg_throughput_tps": trial.agg_throughput_tps,
        "ttft_p95_ms": trial.ttft_p95_ms,
        "fits": int(trial.fits),
        "n_err": trial.n_err,
        # Explicit rather than the column default: a prototype-era table may have none.
        "kept": 0,
        "notes": trial.notes,
        "kv_bits": trial.kv_bits,
        "max_context_cap": trial.max_context_cap,
        "max_batch": trial.max_batch,
        "replicates_n": trial.replicates_n,
    }


def _stored_run(row: sqlite3.Row) -> StoredRun:
    start = RunStart(
        run_id=row["run_id"],
        started_at=_utc_moment(row["started_at_utc"]),
        spec_version=row["spec_version"],
        binary_version=row["binary_version"],
        machine_ram_gb=row["machine_ram_gb"],
        machine_chip=row["machine_chip"],
        machine_os_version=row["machine_os_version"],
        target_context=row["target_context"],
        candidate_models=tuple(json.loads(row["candidate_models_json"])),
        stage1_replicates=row["stage1_replicates"],
        stage2_replicates=row["stage2_replicates"],
        gate_ttft_ms=row["gate_ttft_ms"],
        tps_tie_epsilon=row["tps_tie_epsilon"],
    )
    ended, reason = row["ended_at_utc"], row["exit_reason"]
    return StoredRun(
        start=start,
        ended_at=None if ended is None else _utc_moment(ended),
        exit_reason=None if reason is None else ExitReason(reason),
        recommendation_json=row["recommendation_json"],
        recipe_hash=row["recipe_hash"],
        applied=bool(row["applied"]) or _pending_landed(row["apply_pending_json"]),
    )


def _pending_landed(pending_json: str | None) -> bool:
    if pending_json is None:
        return False
    pending = json.loads(pending_json)
    return PendingApply(pending["config"], pending["sha256"]).landed()


def _stored_trial(row: sqlite3.Row) -> StoredTrial:
    record = TrialRecord(
        run_id=row["run_id"],
        stage=row["stage"],
        ts=_utc_moment(row["ts_utc"]),
        model=row["model"],
        target_context=row["target_context"],
        max_tokens=row["max_tokens"],
        fits=bool(row["fits"]),
        measured_prompt_tokens=row["measured_prompt_tokens"],
        agg_throughput_tps=row["agg_throughput_tps"],
        ttft_p95_ms=row["ttft_p95_ms"],
        n_err=row["n_err"],
        notes=row["notes"],
        kv_bits=row["kv_bits"],
        max_context_cap=row["max_context_cap"],
        max_batch=row["max_batch"],
        replicates_n=row["replicates_n"],
    )
    return StoredTrial(id=row["id"], kept=bool(row["kept"]), record=record)


class Store:
    """One SQLite connection to the autotune database, schema ensured on open.

    Not thread-safe: use it from the thread that created it (the StoreActor's).
    """

    def __init__(self, path: Path, *, retain_runs: int = DEFAULT_RETAIN_RUNS) -> None:
        self._retain_runs = _checked_retain_runs(retain_runs)
        self._path = path
        with _writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            # No implicit transactions: a write is either one statement, committed at once,
            # or runs inside an explicit `_transaction()`.
            self._conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        try:
            with _writing(path):
                self._configure(path)
            with self._transaction():
                _migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def _configure(self, path: Path) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: SQLite would not switch to WAL mode (got {mode!r})")
        # In WAL mode NORMAL loses no commit when this process dies; only a power cut can
        # drop the last ones, and never corrupts the file.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with _writing(self._path):
            # IMMEDIATE takes the write lock up front, so a busy database fails at BEGIN
            # (after busy_timeout) instead of half-way through.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()

    def begin_run(self, run: RunStart) -> None:
        """Records the run as open, then keeps only the newest `retain_runs` runs."""
        # Committed on its own, first: the run is on record even if retention fails or the
        # process dies, and it counts among the runs retention keeps.
        with _writing(self._path):
            self._conn.execute(_insert_sql("tune_runs", _RUN_INSERT_COLUMNS), _run_params(run))
        old = {"current": run.run_id, "keep_others": self._retain_runs - 1}
        with self._transaction():
            # Trials first: they reference their run.
            self._delete_trials_of_old_runs(old)
            self._delete_old_runs(old)

    def _delete_trials_of_old_runs(self, old: dict[str, Any]) -> None:
        self._conn.execute(f"DELETE FROM tune_trials WHERE run_id IN ({_OLD_RUNS})", old)

    def _delete_old_runs(self, old: dict[str, Any]) -> None:
        self._conn.execute(f"DELETE FROM tune_runs WHERE run_id IN ({_OLD_RUNS})", old)

    def record_trial(self, trial: TrialRecord) -> int:
        """Inserts one trial, committed at once; returns its id."""
        with _writing(self._path):
            cursor = self._conn.execute(
                _insert_sql("tune_trials", _TRIAL_INSERT_COLUMNS), _trial_params(trial)
            )
        trial_id = cursor.lastrowid
        assert trial_id is not None  # always set by an INSERT into a rowid table
        return trial_id

    def set_kept(self, run_id: str, trial_id: int) -> None:
        """Makes this Stage 2 trial the run's only row with `kept = 1`."""
        with self._transaction():
            found = self._conn.execute(
                "SELECT 1 FROM tune_trials WHERE id = ? AND run_id = ? AND stage = 2",
                (trial_id, run_id),
            ).fetchone()
            if found is None:
                raise UnknownTrial(f"run {run_id!r} has no Stage 2 trial {trial_id}")
            self._conn.execute(
                "UPDATE tune_trials SET kept = (id = ?) WHERE run_id = ?", (trial_id, run_id)
            )

    def finish_run(
        self,
        run_id: str,
        exit_reason: ExitReason,
        *,
        ended_at: datetime,
        recommendation_json: str | None = None,
        recipe_hash: str | None = None,
        applied: bool = False,
    ) -> None:
        """Closes an open run with its reason; a closed run's reason is final."""
        reason = ExitReason(exit_reason)  # a plain string outside the enum is refused here
        with self._transaction():
            row = self._conn.execute(
                "SELECT ended_at_utc FROM tune_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise UnknownRun(f"no run {run_id!r}")
            if row["ended_at_utc"] is not None:
                raise RunAlreadyFinished(f"run {run_id!r} already ended at {row['ended_at_utc']}")
            closing = {
                "run_id": run_id,
                "ended_at_utc": _utc_text(ended_at),
                "exit_reason": reason.value,
                "recommendation_json": recommendation_json,
                "recipe_hash": recipe_hash,
                "applied": int(applied),
            }
            self._conn.execute(
                "UPDATE tune_runs SET ended_at_utc = :ended_at_utc, exit_reason = :exit_reason,"
                " recommendation_json = :recommendation_json, recipe_hash = :recipe_hash,"
                " applied = :applied WHERE run_id = :run_id",
                closing,
            )

    def close_if_open(self, run_id: str, exit_reason: ExitReason, *, ended_at: datetime) -> bool:
        """Closes the run unless it is closed already (a crash path's backstop); True if it did."""
        try:
            self.finish_run(run_id, exit_reason, ended_at=ended_at)
        except (RunAlreadyFinished, UnknownRun):  # closed already, or never recorded at all
            return False
        return True

    def begin_apply(self, run_id: str, pending: PendingApply) -> None:
        """Records, before the config is written, what `--apply` is about to write."""
        document = json.dumps({"config": pending.config_path, "sha256": pending.sha256})
        self._update_run(run_id, "apply_pending_json = ?", (document,))

    def mark_applied(self, run_id: str) -> None:
        """Records that the run's recommendation was written to the config (`--apply`)."""
        self._update_run(run_id, "applied = 1, apply_pending_json = NULL", ())

    def settle_pending_applies(self) -> None:
        """Turns the pending records of applies killed half-way into what happened."""
        rows = self._conn.execute(
            "SELECT run_id, apply_pending_json FROM tune_runs WHERE apply_pending_json IS NOT NULL"
        ).fetchall()
        for row in rows:
            applied = "1" if _pending_landed(row["apply_pending_json"]) else "applied"
            self._update_run(row["run_id"], f"applied = {applied}, apply_pending_json = NULL", ())

    def _update_run(self, run_id: str, assignments: str, values: tuple[str, ...]) -> None:
        with self._transaction():
            cursor = self._conn.execute(
                f"UPDATE tune_runs SET {assignments} WHERE run_id = ?", (*values, run_id)
            )
            if cursor.rowcount != 1:
                raise UnknownRun(f"no run {run_id!r}")

    def runs(self) -> list[StoredRun]:
        """Every run, oldest first."""
        rows = self._conn.execute("SELECT * FROM tune_runs ORDER BY started_at_utc, rowid")
        return [_stored_run(row) for row in rows]

    def trials(self, run_id: str) -> list[StoredTrial]:
        """The run's trials in the order they were recorded."""
        rows = self._conn.execute(
            "SELECT * FROM tune_trials WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [_stored_trial(row) for row in rows]

    def integrity_ok(self) -> bool:
        rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return [row[0] for row in rows] == ["ok"]

    def close(self) -> None:
        self._conn.close()


class StoreActor(pykka.ThreadingActor):
    """Owns the Store on the actor's thread, where its connection was opened."""

    def __init__(self, path: Path, *, retain_runs: int = DEFAULT_RETAIN_RUNS) -> None:
        super().__init__()
        self._path = path
        # Checked here, in the caller's thread, so a bad value fails the start call itself.
        self._retain_runs = _checked_retain_runs(retain_runs)
        # Set by on_start, which pykka runs before handling any message.
        self._opened: Store | None = None
        self._unavailable: StoreUnavailable | None = None

    def on_start(self) -> None:
        try:
            self._opened = Store(self._path, retain_runs=self._retain_runs)
        except StoreUnavailable as error:
            # Kept, not raised: a failed on_start kills the actor, and every caller would get
            # an ActorDeadError instead of why. Each call now raises the reason.
            self._unavailable = error
            return
        self._opened.settle_pending_applies()

    @property
    def _store(self) -> Store:
        if self._opened is None:
            assert self._unavailable is not None  # on_start either opened it or kept why not
            raise self._unavailable
        return self._opened

    def on_stop(self) -> None:
        if self._opened is not None:
            self._opened.close()

    def begin_run(self, run: RunStart) -> None:
        self._store.begin_run(run)

    def record_trial(self, trial: TrialRecord) -> int:
        return self._store.record_trial(trial)

    def set_kept(self, run_id: str, trial_id: int) -> None:
        self._store.set_kept(run_id, trial_id)

    def finish_run(
        self,
        run_id: str,
        exit_reason: ExitReason,
        *,
        ended_at: datetime,
        recommendation_json: str | None = None,
        recipe_hash: str | None = None,
        applied: bool = False,
    ) -> None:
        self._store.finish_run(
            run_id,
            exit_reason,
            ended_at=ended_at,
            recommendation_json=recommendation_json,
            recipe_hash=recipe_hash,
            applied=applied,
        )

    def close_if_open(self, run_id: str, exit_reason: ExitReason, *, ended_at: datetime) -> bool:
        try:
            return self._store.close_if_open(run_id, exit_reason, ended_at=ended_at)
        except StoreUnavailable as error:
            # The backstop of a run that ends anyway: say why its row stays open, and let the
            # orderly stop go on (whoever failed to write first has reported it already).
            log.warning("run %s left open: %s", run_id, error)
            return False

    def runs(self) -> list[StoredRun]:
        return self._store.runs()

    def trials(self, run_id: str) -> list[StoredTrial]:
        return self._store.trials(run_id)

    def integrity_ok(self) -> bool:
        return self._store.integrity_ok()


class StoreProxy(ActorMemberMixin, pykka.ActorProxy[StoreActor]):
    """The StoreActor's methods as mypy sees them through a proxy: each returns a Future."""

    begin_run = proxy_method(StoreActor.begin_run)
    record_trial = proxy_method(StoreActor.record_trial)
    set_kept = proxy_method(StoreActor.set_kept)
    finish_run = proxy_method(StoreActor.finish_run)
    close_if_open = proxy_method(StoreActor.close_if_open)
    runs = proxy_method(StoreActor.runs)
    trials = proxy_method(StoreActor.trials)
    integrity_ok = proxy_method(StoreActor.integrity_ok)


def start_store_actor(path: Path, *, retain_runs: int = DEFAULT_RETAIN_RUNS) -> StoreProxy:
    """Starts a StoreActor on the database at `path` and returns its typed proxy."""
    return cast(StoreProxy, StoreActor.start(path, retain_runs=retain_runs).proxy())
