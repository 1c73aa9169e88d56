"""Why an autotune run ended: the closed set stored in `tune_runs.exit_reason`."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class ExitReason(StrEnum):
    OK = "ok"
    INTERRUPTED = "interrupted"
    NO_FEASIBLE = "no_feasible"
    BUDGET_EXHAUSTED_NO_MODEL_SELECTED = "budget_exhausted_no_model_selected"
    BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION = "budget_exhausted_with_partial_recommendation"
    PRE_WARM_INTEGRITY_FAILURE = "pre_warm_integrity_failure"
    PROVIDER_CONFLICT = "provider_conflict"
    CONFIG_ERROR = "config_error"
    INTERNAL_ERROR = "internal_error"


# How a run ends when the database itself cannot be written: no row can hold a reason then,
# so it is an outcome of the Supervisor only, never a stored exit reason.
DATABASE_UNAVAILABLE: Final = "database_unavailable"
