"""The records of `store_records` as table rows, both ways, and the two queries every reader
of the database runs (the writable Store and the read-only one alike)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from macprovider.actors import _schema
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store_records import (
    PendingApply,
    RunStart,
    StoredRun,
    StoredTrial,
    TrialRecord,
)
from macprovider.actors.trial_outcome import TrialOutcome
from macprovider.server.knobs import TUNED_KNOBS

RUN_INSERT_COLUMNS: Final = (
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


def _knob_columns() -> tuple[tuple[str, str], ...]:
    """(TrialRecord field, tune_trials column) of each tuned knob: the knob table names both."""
    pairs = []
    for spec in TUNED_KNOBS:
        assert spec.db_column is not None  # every tuned knob has its column
        pairs.append((spec.name, spec.db_column))
    return tuple(pairs)


_KNOB_COLUMNS: Final = _knob_columns()

TRIAL_INSERT_COLUMNS: Final = (
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
    *(column for _, column in _KNOB_COLUMNS),
    "replicates_n",
    "outcome",
)


def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{column}" for column in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"


def utc_text(moment: datetime) -> str:
    # A fixed-width UTC form, so text order is time order (retention sorts on it).
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass a timezone-aware one")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _utc_moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    # Prototype-era rows may carry naive stamps; they were UTC too.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def run_params(run: RunStart) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "started_at_utc": utc_text(run.started_at),
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


def trial_params(trial: TrialRecord) -> dict[str, Any]:
    return {
        "ts_utc": utc_text(trial.ts),
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
        **{column: getattr(trial, field) for field, column in _KNOB_COLUMNS},
        "replicates_n": trial.replicates_n,
        "outcome": trial.outcome.value,
    }


def pending_landed(pending_json: str | None) -> bool:
    if pending_json is None:
        return False
    pending = json.loads(pending_json)
    return PendingApply(pending["config"], pending["sha256"]).landed()


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
        applied=bool(row["applied"]) or pending_landed(row["apply_pending_json"]),
    )


def _stored_trial(row: sqlite3.Row) -> StoredTrial:
    record = TrialRecord(
        run_id=row["run_id"],
        stage=row["stage"],
        ts=_utc_moment(row["ts_utc"]),
        model=row["model"],
        target_context=row["target_context"],
        max_tokens=row["max_tokens"],
        outcome=TrialOutcome(row["read_outcome"]),
        measured_prompt_tokens=row["measured_prompt_tokens"],
        agg_throughput_tps=row["agg_throughput_tps"],
        ttft_p95_ms=row["ttft_p95_ms"],
        n_err=row["n_err"],
        notes=row["notes"],
        **{field: row[column] for field, column in _KNOB_COLUMNS},
        replicates_n=row["replicates_n"],
    )
    return StoredTrial(id=row["id"], kept=bool(row["kept"]), record=record)


def select_runs(conn: sqlite3.Connection) -> list[StoredRun]:
    """Every run, oldest first."""
    rows = conn.execute("SELECT * FROM tune_runs ORDER BY started_at_utc, rowid")
    return [_stored_run(row) for row in rows]


def select_trials(conn: sqlite3.Connection, run_id: str) -> list[StoredTrial]:
    """The run's trials in the order they were recorded."""
    rows = conn.execute(
        f"SELECT *, {_schema.OUTCOME_SQL} AS read_outcome FROM tune_trials"
        " WHERE run_id = ? ORDER BY id",
        (run_id,),
    )
    return [_stored_trial(row) for row in rows]
