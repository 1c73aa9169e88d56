"""The one table from typed errors to process exit codes (sysexits.h numbering)."""

from __future__ import annotations

from macprovider.server.errors import (
    ConfigError,
    EngineDied,
    ModelLoadError,
    ModelNotFoundError,
    PortUnavailable,
    ServeError,
)

EX_USAGE = 64  # a bad flag, environment variable or config value
EX_DATAERR = 65  # the model's files exist but cannot be loaded
EX_NOINPUT = 66  # the model id or path resolves to nothing on this machine
EX_UNAVAILABLE = 69  # the address to listen on is taken
EX_SOFTWARE = 70  # anything unexpected (a bug)
EX_TEMPFAIL = 75  # `run` gave up on a provider in a crash loop

EXIT_CODES: dict[type[Exception], int] = {
    ConfigError: EX_USAGE,
    EngineDied: EX_SOFTWARE,
    ModelLoadError: EX_DATAERR,
    ModelNotFoundError: EX_NOINPUT,
    PortUnavailable: EX_UNAVAILABLE,
    ServeError: EX_SOFTWARE,
}


def exit_code_for(error: Exception) -> int:
    for kind in type(error).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return EX_SOFTWARE


# How a supervised `run` ended (RunOutcome.reason) → its exit code.
RUN_EXIT_CODES: dict[str, int] = {"stopped": 0, "crash_loop": EX_TEMPFAIL}


def run_exit_code(reason: str) -> int:
    return RUN_EXIT_CODES.get(reason, EX_SOFTWARE)
