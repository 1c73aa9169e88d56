"""The small frozen values actors exchange: requests' arguments and their results.

Replies travel as pykka futures; what a future resolves to is one of these.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

# Signals a process never raises on itself when it fails (unlike SIGABRT, SIGSEGV or SIGBUS,
# which a failed allocation or a crash raises): a death by one of them was sent from outside
# (an operator, a script, another supervisor), so it says nothing about the model. A model
# too big for the machine makes serve exit 65 on its own, before the OS would kill it.
_OUTSIDE_SIGNALS: Final = frozenset(
    {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}
)


@dataclass(frozen=True)
class Knobs:
    """`serve`'s options besides the model, the port and the API key: the three serving
    knobs autotune measures, the provider's memory cap, its queue and the host it binds.
    None leaves the provider's own default (the flag is omitted). Each field is named after
    its knob in the knob table (`server.knobs.KNOBS`), which turns it into a flag."""

    kv_bits: int | None = None
    max_context: int | None = None
    max_batch: int | None = None
    memory_limit_gb: float | None = None
    max_queue: int | None = None
    host: str | None = None  # None: serve's default, loopback


@dataclass(frozen=True)
class ProviderHandle:
    """A provider child the ProviderActor started: who it is and where it writes."""

    pid: int
    pgid: int  # its own process group (== pid): what stop signals
    port: int
    model: str
    argv: tuple[str, ...]  # never holds the API key: that goes in the child's environment
    log_path: Path  # stdout and stderr, merged
    host: str  # what the supervisor connects to (loopback for a wildcard bind)


@dataclass(frozen=True)
class Ready:
    """The provider answers `/v1/models` with 200 and stayed alive to answer it twice."""


@dataclass(frozen=True)
class Exited:
    """The provider died before (or right after) becoming ready."""

    returncode: int | None  # negative: killed by that signal
    stderr_tail: str  # the most telling lines of its log, at most 2000 characters

    @property
    def killed_from_outside(self) -> bool:
        """Killed by a signal only others send (see `_OUTSIDE_SIGNALS`)."""
        code = self.returncode
        return code is not None and code < 0 and -code in _OUTSIDE_SIGNALS

    def describe(self, when: str) -> str:
        """The death as one line, the same in trial notes and in `run`'s log: what ended it
        (`killed by SIGKILL`, `exit 65`) and its log's telling lines joined by ` | `, e.g.
        `provider exited during load (exit 65): error: out of memory | ...`."""
        code = self.returncode
        if code is None:
            cause = "exit status unknown"
        elif code < 0:
            try:
                cause = f"killed by {signal.Signals(-code).name}"
            except ValueError:  # a number this platform has no name for
                cause = f"killed by signal {-code}"
        else:
            cause = f"exit {code}"
        tail = " | ".join(line for line in self.stderr_tail.splitlines() if line.strip())
        return f"provider exited {when} ({cause}): {tail or 'no output'}"


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


@dataclass(frozen=True)
class ProbeSpec:
    """One measured replicate: the same prompt on `concurrency` concurrent streams.

    Requests are streaming chat completions at temperature 0 with a fixed `max_tokens`;
    `timeout_s` bounds the whole replicate; `stop_texts` are the model's stop tokens as
    text (e.g. `<|im_end|>`), which must never appear in what the provider streams back.
    `banned_tokens` are sent as `logit_bias` -100, so that every request generates exactly
    `max_tokens` (Stage 2 bans the stop tokens: cells then compare equal work). The bench's
    mixed-requests configuration also sets `temperature`, `top_p`, `seed` and a `bias` of
    its own, added to the banned tokens' logit_bias.
    """

    port: int
    model: str  # the request's `model` field: the id the provider serves
    prompt: str  # the single user message
    max_tokens: int
    concurrency: int
    timeout_s: float
    stop_texts: tuple[str, ...]
    banned_tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Loaded:
    """A provider started, became ready and answered one disposable request.

    `seconds` runs from the start to that answer: load time, which never counts toward TTFT.
    """

    seconds: float


@dataclass(frozen=True)
class LoadFailed:
    """The provider could not be brought up; `reason` is one line for the trial's notes."""

    reason: str
    exited: bool  # it died during load (out of memory, unloadable weights, …)
    # Killed from outside (`Exited.killed_from_outside`): no verdict on whether it fits.
    killed_from_outside: bool = False


# --- provider conflicts: detect, drain, restore --------------------------------------------

FindingKind = Literal["launchd", "systemd", "foreground", "port"]


@dataclass(frozen=True)
class Finding:
    """One live provider found before tuning, or a listener on the tuning port.

    `name` is what the operator reads first: `launchd-managed`, `systemd-managed`,
    `foreground-PID-<n>` or `port-<p>-in-use`. A foreground finding records how to start
    the process again (`argv`, `cwd`, `env`), read before it was signalled.
    """

    kind: FindingKind
    name: str
    detail: str  # one line: the label or unit, the command line, what listens
    pid: int | None = None  # the process to watch (a service's main PID, the port's holder)
    # Not in repr: a command line and an environment can hold keys and tokens, and findings
    # get logged and printed (`detail` shows the command line redacted).
    argv: tuple[str, ...] = field(default=(), repr=False)
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    service: str | None = None  # the launchd label or systemd unit a command names


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did, one line per drained finding.

    `failed` lines end with the command to run by hand; `not_restarted` holds the
    foreground processes left stopped on purpose (no `--restart-foreground`), each with
    the command line that starts it again. Only `failed` means the restore went wrong.
    """

    restored: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    not_restarted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drained:
    """Everything found was stopped and the port is free."""

    stopped: tuple[Finding, ...]


@dataclass(frozen=True)
class DrainFailed:
    """A finding would not go (or cannot be stopped by us); what was stopped is restored."""

    reason: str
    restore: RestoreReport
