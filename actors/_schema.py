"""The autotune database layout, as data, and the two things done with it: checking a file
against it (every reader) and bringing an older file up to it (the writer, on open).

Two tables: `tune_runs`, one row per autotune run, and `tune_trials`, one row per measured
(or failed) trial of a run. Columns are only ever added, so an older file is migrated in
place and a newer one stays readable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store_errors import SchemaMismatch
from macprovider.actors.trial_outcome import TrialOutcome


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, definition), in the order of the table
    constraints: tuple[str, ...] = ()
    # Columns an older copy of this table may lack, each with the definition that adds it
    # to the existing rows (ALTER TABLE ADD COLUMN: nullable, or NOT NULL with a default).
    addable: Mapping[str, str] = field(default_factory=dict)
    # For an added column whose value older rows imply: the SQL expression over the row that
    # fills it in, once, where it is still NULL.
    backfill: Mapping[str, str] = field(default_factory=dict)

    def create_sql(self) -> str:
        body = [f"{name} {definition}" for name, definition in self.columns]
        body += self.constraints
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(body)})"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# Generated from the enum so the two cannot drift; NULL while the run is open.
_REASONS: Final = ", ".join(f"'{reason.value}'" for reason in ExitReason)

RUNS: Final = Table(
    name="tune_runs",
    columns=(
        ("run_id", "TEXT PRIMARY KEY"),
        ("started_at_utc", "TEXT NOT NULL"),  # ISO 8601, fixed width: sorts chronologically
        ("ended_at_utc", "TEXT"),
        ("spec_version", "TEXT NOT NULL"),
        ("binary_version", "TEXT NOT NULL"),
        ("machine_ram_gb", "REAL NOT NULL"),
        ("machine_chip", "TEXT NOT NULL"),
        ("machine_os_version", "TEXT NOT NULL"),
        ("target_context", "INTEGER NOT NULL"),
        ("candidate_models_json", "TEXT NOT NULL"),
        ("stage1_replicates", "INTEGER NOT NULL"),
        ("stage2_replicates", "INTEGER NOT NULL"),
        ("gate_ttft_ms", "REAL NOT NULL"),
        ("tps_tie_epsilon", "REAL NOT NULL"),
        ("recommendation_json", "TEXT"),
        ("recipe_hash", "TEXT"),
        ("applied", "INTEGER NOT NULL DEFAULT 0 CHECK (applied IN (0, 1))"),
        ("exit_reason", f"TEXT CHECK (exit_reason IN ({_REASONS}))"),
        # {"config": path, "sha256": hex}: what `--apply` was about to write, recorded before
        # the write and cleared with `applied = 1` after it. A process killed in between
        # leaves it set; the config's bytes then tell whether the write landed.
        ("apply_pending_json", "TEXT"),
    ),
    # A run is open exactly while it has neither an end time nor a reason.
    constraints=("CHECK ((ended_at_utc IS NULL) = (exit_reason IS NULL))",),
    addable={"apply_pending_json": "TEXT"},
)

_OUTCOMES: Final = ", ".join(_sql_text(outcome.value) for outcome in TrialOutcome)
# `fits` predates `outcome` and stays for whoever reads the table directly: the two agree.
_OUTCOME_CHECK: Final = f"CHECK (outcome IN ({_OUTCOMES}) AND fits = (outcome = 'fits'))"

# How a row written before the outcome column ended, read from how its notes began then (the
# texts of that time, kept here as they were): the first match wins. Every other row that does
# not fit was read as a "does not fit" verdict, so it stays one.
_LEGACY_NOTES: Final = (
    ("interrupted", TrialOutcome.INTERRUPTED),
    ("out of budget", TrialOutcome.OUT_OF_BUDGET),
    ("pre-warm integrity failure", TrialOutcome.INTEGRITY_FAILURE),
    # A signal then was any signal: a crash's SIGABRT reads as a kill from outside too.
    ("provider exited during load (killed by a signal)", TrialOutcome.PROVIDER_KILLED),
    ("pre-warm ", TrialOutcome.PREWARM_FAILED),  # "pre-warm failed", "pre-warm transient"
    ("no probe prompt", TrialOutcome.PREWARM_FAILED),
    ("TTFT p95 ", TrialOutcome.OVER_TTFT_GATE),
    ("provider did not start", TrialOutcome.LOAD_FAILED),
    ("provider exited during load", TrialOutcome.LOAD_FAILED),
    ("provider not ready within", TrialOutcome.LOAD_FAILED),
    ("the disposable first request failed", TrialOutcome.LOAD_FAILED),
    ("Traceback (most recent call last)", TrialOutcome.INTERNAL_ERROR),
)


def _legacy_outcome_sql() -> str:
    whens = [f"WHEN fits = 1 THEN {_sql_text(TrialOutcome.FITS.value)}"]
    for prefix, outcome in _LEGACY_NOTES:
        began = f"substr(notes, 1, {len(prefix)}) = {_sql_text(prefix)}"
        whens.append(f"WHEN {began} THEN {_sql_text(outcome.value)}")
    fallback = _sql_text(TrialOutcome.MEASURE_FAILED.value)
    return f"CASE {' '.join(whens)} ELSE {fallback} END"


# The outcome of a row whatever wrote it: a row with none (an older macprovider wrote it
# after the migration) is read as the migration reads it.
OUTCOME_SQL: Final = f"COALESCE(outcome, {_legacy_outcome_sql()})"

TRIALS: Final = Table(
    name="tune_trials",
    columns=(
        ("id", "INTEGER PRIMARY KEY"),
        ("ts_utc", "TEXT NOT NULL"),
        ("run_id", "TEXT NOT NULL REFERENCES tune_runs (run_id)"),
        ("stage", "INTEGER NOT NULL CHECK (stage IN (1, 2))"),
        ("model", "TEXT NOT NULL"),
        ("target_context", "INTEGER NOT NULL"),
        ("measured_prompt_tokens", "INTEGER"),  # NULL: nothing was measured
        ("max_tokens", "INTEGER NOT NULL"),
        ("agg_throughput_tps", "REAL"),
        ("ttft_p95_ms", "REAL"),
        ("fits", "INTEGER NOT NULL CHECK (fits IN (0, 1))"),
        ("n_err", "INTEGER NOT NULL DEFAULT 0"),
        ("kept", "INTEGER NOT NULL DEFAULT 0 CHECK (kept IN (0, 1))"),
        ("notes", "TEXT"),
        ("kv_bits", "INTEGER CHECK (kv_bits IN (4, 8))"),  # NULL: unquantized
        ("max_context_cap", "INTEGER"),  # NULL: the provider's default
        ("max_batch", "INTEGER"),  # NULL: the provider's default
        ("replicates_n", "INTEGER"),
        ("outcome", f"TEXT NOT NULL {_OUTCOME_CHECK}"),  # `TrialOutcome`
    ),
    # The prototype ran Stage 1 only, at default knobs: its table had neither the stage
    # nor the Stage 2 knob columns. Its rows are Stage 1 rows at default knobs. Tables
    # before the outcome column get theirs from their rows' fits and notes.
    addable={
        "stage": "INTEGER NOT NULL DEFAULT 1",
        "kv_bits": "INTEGER CHECK (kv_bits IN (4, 8))",
        "max_context_cap": "INTEGER",
        "max_batch": "INTEGER",
        "replicates_n": "INTEGER",
        "outcome": f"TEXT {_OUTCOME_CHECK}",
    },
    backfill={"outcome": _legacy_outcome_sql()},
)

# Runs first: trials reference them.
TABLES: Final = (RUNS, TRIALS)

INDEXES: Final = ("CREATE INDEX IF NOT EXISTS tune_trials_run_id ON tune_trials (run_id)",)


def _present_columns(conn: sqlite3.Connection, table: Table) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")}


def outdated(conn: sqlite3.Connection) -> list[str]:
    """What the file lacks of this layout, one `table.column` (or `table`) each: empty for a
    current (or newer) file. Reads only."""
    lacking: list[str] = []
    for table in TABLES:
        present = _present_columns(conn, table)
        if not present:
            lacking.append(table.name)
            continue
        lacking += [f"{table.name}.{name}" for name, _ in table.columns if name not in present]
    return lacking


def migrate(conn: sqlite3.Connection) -> None:
    """Creates what is missing, adds the columns an older table lacks and fills them in;
    idempotent. The caller runs it in one transaction: a refused file is left untouched."""
    for table in TABLES:
        conn.execute(table.create_sql())
        _add_missing_columns(conn, table)
    for index in INDEXES:
        conn.execute(index)


def _add_missing_columns(conn: sqlite3.Connection, table: Table) -> None:
    present = _present_columns(conn, table)
    missing = [name for name, _ in table.columns if name not in present]
    unexplained = [name for name in missing if name not in table.addable]
    if unexplained:
        raise SchemaMismatch(
            f"table {table.name} lacks {', '.join(unexplained)}: not a layout this version knows"
        )
    for name in missing:
        conn.execute(f"ALTER TABLE {table.name} ADD COLUMN {name} {table.addable[name]}")
    for name, expression in table.backfill.items():
        conn.execute(f"UPDATE {table.name} SET {name} = {expression} WHERE {name} IS NULL")
