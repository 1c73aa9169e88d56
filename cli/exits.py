"""The one table from typed errors to process exit codes (sysexits.h numbering)."""

from __future__ import annotations

from macprovider.actors.autotune_inputs import AutotuneInputError
from macprovider.actors.exit_reasons import DATABASE_UNAVAILABLE, ExitReason
from macprovider.actors.stop_signals import EXIT_INTERRUPTED
from macprovider.cli.errors import (
    ApplyError,
    HubUnavailable,
    ModelFolderError,
    ModelImportError,
    ModelIntegrityError,
    ReportError,
    ReportHtmlError,
    ServiceError,
)
from macprovider.server.errors import (
    ConfigError,
    EngineDied,
    MemoryBudgetExceeded,
    ModelLoadError,
    ModelNotFoundError,
    PortUnavailable,
    ServeError,
)

EX_USAGE = 64  # a bad flag, environment variable or config value
EX_DATAERR = 65  # the model cannot be loaded here: files refused, or over the memory limit
EX_NOINPUT = 66  # the model id or path resolves to nothing on this machine
EX_UNAVAILABLE = 69  # the address to listen on is taken
EX_SOFTWARE = 70  # anything unexpected (a bug)
EX_CANTCREAT = 73  # an output file (config, HTML report) cannot be written
EX_RESTORE_FAILED = 71  # autotune drained a provider and could not start it again
EX_TEMPFAIL = 75  # `run` gave up on a provider in a crash loop

EXIT_CODES: dict[type[Exception], int] = {
    ApplyError: EX_CANTCREAT,
    AutotuneInputError: EX_USAGE,
    ConfigError: EX_USAGE,
    EngineDied: EX_SOFTWARE,
    HubUnavailable: EX_UNAVAILABLE,
    MemoryBudgetExceeded: EX_DATAERR,
    ModelLoadError: EX_DATAERR,
    ModelFolderError: EX_CANTCREAT,
    ModelImportError: EX_DATAERR,
    ModelIntegrityError: EX_DATAERR,
    ModelNotFoundError: EX_NOINPUT,
    PortUnavailable: EX_UNAVAILABLE,
    ReportError: EX_NOINPUT,
    ReportHtmlError: EX_CANTCREAT,
    ServeError: EX_SOFTWARE,
    ServiceError: EX_CANTCREAT,
}

# The errors that are the operator's to fix: one line on stderr, no traceback.
USER_ERRORS = tuple(EXIT_CODES)


def exit_code_for(error: Exception) -> int:
    for kind in type(error).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return EX_SOFTWARE


# How a supervised `run` ended (RunOutcome.reason) → its exit code.
RUN_EXIT_CODES: dict[str, int] = {"stopped": 0, "crash_loop": EX_TEMPFAIL}


def run_exit_code(reason: str) -> int:
    return RUN_EXIT_CODES.get(reason, EX_SOFTWARE)


# How an autotune run ended (its exit reason, `tune_runs.exit_reason`) → its exit code; README's
# "Exit codes of `autotune`" table lists them.
AUTOTUNE_EXIT_CODES: dict[ExitReason, int] = {
    ExitReason.OK: 0,
    ExitReason.NO_FEASIBLE: 2,
    ExitReason.BUDGET_EXHAUSTED_NO_MODEL_SELECTED: 3,
    ExitReason.BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION: 4,
    ExitReason.CONFIG_ERROR: EX_USAGE,
    ExitReason.PRE_WARM_INTEGRITY_FAILURE: EX_DATAERR,
    ExitReason.PROVIDER_CONFLICT: EX_UNAVAILABLE,
    ExitReason.INTERNAL_ERROR: EX_SOFTWARE,
    ExitReason.INTERRUPTED: EXIT_INTERRUPTED,
}


def autotune_outcome_code(reason: str) -> int:
    """The exit code of a run that ended without the tuner's summary (the Supervisor's
    outcome reason: an exit reason, or the database being unwritable)."""
    if reason == DATABASE_UNAVAILABLE:
        return EX_CANTCREAT
    if reason in set(ExitReason):
        return AUTOTUNE_EXIT_CODES[ExitReason(reason)]
    return EX_SOFTWARE
