"""The small frozen values actors exchange: requests' arguments and their results (DESIGN §3).

Replies travel as pykka futures; what a future resolves to is one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Knobs:
    """The three serving knobs; None leaves the provider's own default (the flag is omitted)."""

    kv_bits: int | None = None
    max_context: int | None = None
    max_batch: int | None = None


@dataclass(frozen=True)
class ProviderHandle:
    """A provider child the ProviderActor started: who it is and where it writes."""

    pid: int
    pgid: int  # its own process group (== pid): what stop signals
    port: int
    model: str
    argv: tuple[str, ...]
    log_path: Path  # stdout and stderr, merged


@dataclass(frozen=True)
class Ready:
    """The provider answers `/v1/models` with 200 and stayed alive to answer it twice."""


@dataclass(frozen=True)
class Exited:
    """The provider died before (or right after) becoming ready."""

    returncode: int | None  # negative: killed by that signal
    stderr_tail: str  # the most telling lines of its log, at most 2000 characters


@dataclass(frozen=True)
class TimedOut:
    """The provider is alive but did not become ready in time."""


@dataclass(frozen=True)
class Stopped:
    """The provider exited on SIGTERM within the grace (or had already exited)."""

    returncode: int | None = None  # None: there was no provider to stop


@dataclass(frozen=True)
class Killed:
    """The provider outlived the grace and its process group was SIGKILLed."""

    returncode: int | None = None


@dataclass(frozen=True)
class RunOutcome:
    """How a supervised run ended: an exit reason and, for failures, what happened."""

    reason: str
    failure: str | None = None
