"""What the autotune database holds, as values: a run's start, a trial, and the rows read back.

The Store writes these and every reader gets them back; none of them knows about SQLite.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.trial_outcome import TrialOutcome

Stage = Literal[1, 2]
KvBits = Literal[4, 8]


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
    """One measured (or failed) trial (one `tune_trials` row).

    The knob fields carry the knobs' own names (`server.knobs.TUNED_KNOBS`); the table's
    columns keep theirs (`KnobSpec.db_column`: `max_context` is `max_context_cap`).
    """

    run_id: str
    stage: Stage  # no default: every row states its stage
    ts: datetime  # timezone-aware
    model: str
    target_context: int
    max_tokens: int
    outcome: TrialOutcome  # what the reports read; `notes` only says it in words
    measured_prompt_tokens: int | None = None
    agg_throughput_tps: float | None = None
    ttft_p95_ms: float | None = None
    n_err: int = 0
    notes: str | None = None
    kv_bits: KvBits | None = None  # None: unquantized
    max_context: int | None = None  # None: the provider's default
    max_batch: int | None = None  # None: the provider's default
    replicates_n: int | None = None

    @property
    def fits(self) -> bool:
        return self.outcome is TrialOutcome.FITS


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
