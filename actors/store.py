"""The autotune database's writer: a plain `Store` over one SQLite connection, which brings
the file up to the current layout on open. Within `autotune` only the StoreActor
(`store_actor`) holds one; readers (`report`) open `store_reader.ReadOnlyStore` instead.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from macprovider.actors import _schema
from macprovider.actors._store_rows import (
    RUN_INSERT_COLUMNS,
    TRIAL_INSERT_COLUMNS,
    insert_sql,
    pending_landed,
    run_params,
    select_runs,
    select_trials,
    trial_params,
    utc_text,
)
from macprovider.actors.autotune_inputs import DEFAULT_RETAIN_RUNS
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store_errors import (
    RunAlreadyFinished,
    StoreError,
    StoreUnavailable,
    UnknownRun,
    UnknownTrial,
)
from macprovider.actors.store_records import (
    PendingApply,
    RunStart,
    StoredRun,
    StoredTrial,
    TrialRecord,
)

BUSY_TIMEOUT_S: Final = 5.0


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


# Runs beyond the newest `keep_others` others, never the run being started. Both retention
# deletes use this same query inside one transaction, so they agree on the set.
_OLD_RUNS: Final = """
    SELECT run_id FROM tune_runs WHERE run_id != :current
    ORDER BY started_at_utc DESC, rowid DESC LIMIT -1 OFFSET :keep_others
"""


def checked_retain_runs(retain_runs: int) -> int:
    if retain_runs < 1:
        raise ValueError(f"retain_runs must be at least 1, got {retain_runs}")
    return retain_runs


class Store:
    """One SQLite connection to the autotune database, schema ensured on open.

    Not thread-safe: use it from the thread that created it (the StoreActor's).
    """

    def __init__(self, path: Path, *, retain_runs: int = DEFAULT_RETAIN_RUNS) -> None:
        self._retain_runs = checked_retain_runs(retain_runs)
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
                _schema.migrate(self._conn)
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
            self._conn.execute(insert_sql("tune_runs", RUN_INSERT_COLUMNS), run_params(run))
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
                insert_sql("tune_trials", TRIAL_INSERT_COLUMNS), trial_params(trial)
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
                "ended_at_utc": utc_text(ended_at),
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
            applied = "1" if pending_landed(row["apply_pending_json"]) else "applied"
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
        return select_runs(self._conn)

    def trials(self, run_id: str) -> list[StoredTrial]:
        """The run's trials in the order they were recorded."""
        return select_trials(self._conn, run_id)

    def integrity_ok(self) -> bool:
        rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return [row[0] for row in rows] == ["ok"]

    def close(self) -> None:
        self._conn.close()
