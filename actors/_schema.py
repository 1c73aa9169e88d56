"""The autotune database layout (DESIGN §6), as data: the Store creates and migrates from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from macprovider.actors.exit_reasons import ExitReason


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, definition), in DESIGN §6 order
    constraints: tuple[str, ...] = ()
    # Columns an older copy of this table may lack, each with the definition that adds it
    # to the existing rows (ALTER TABLE ADD COLUMN: nullable, or NOT NULL with a default).
    addable: Mapping[str, str] = field(default_factory=dict)

    def create_sql(self) -> str:
        body = [f"{name} {definition}" for name, definition in self.columns]
        body += self.constraints
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(body)})"


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
    ),
    # The prototype ran Stage 1 only, at default knobs: its table had neither the stage
    # nor the Stage 2 knob columns. Its rows are Stage 1 rows at default knobs.
    addable={
        "stage": "INTEGER NOT NULL DEFAULT 1",
        "kv_bits": "INTEGER CHECK (kv_bits IN (4, 8))",
        "max_context_cap": "INTEGER",
        "max_batch": "INTEGER",
        "replicates_n": "INTEGER",
    },
)

# Runs first: trials reference them.
TABLES: Final = (RUNS, TRIALS)

INDEXES: Final = ("CREATE INDEX IF NOT EXISTS tune_trials_run_id ON tune_trials (run_id)",)
