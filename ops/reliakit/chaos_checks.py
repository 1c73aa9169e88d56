"""The invariants one chaos iteration must keep, checked on the facts collected after it.

Pure: `failures(plan, facts)` reads only what `chaos_run` collected (exit code, the signals as
they were sent, processes, port, DB rows, config bytes, service-manager calls), so every rule
is tested on hand-made facts.

The exit-code rules are README's tables plus the interrupt contract:

- a first SIGINT/SIGTERM ends `autotune` with 130: before the supervisor exists with one
  line and nothing written (no run row, the config untouched), afterwards in order (the
  run row closed `interrupted`, `--apply` writing nothing); `run` exits 0 once supervised
  (130 before); a second signal exits 130 at once;
- a signal that lands after the command finished its work may leave its normal exit code.
  "Finished" is read from the run row: a signal sent before the row was closed that still
  ends with the normal code is a LOST SIGNAL (this is exact where a fraction of a measured
  duration would guess, and holds however loaded the machine is);
- a signal the process had no handler for when it was sent (the interpreter was still
  starting) kills it with that signal: the kernel's doing, not the program's;
- after SIGKILL only the leftovers, port, DB, config and temp-file rules apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import yaml

from reliakit.chaos_plan import STOP_SIGNALS, Scenario, Sig

LEFTOVER_BOUND_S: Final = 1.0  # every process of ours gone this long after the exit
PROVIDER_DEATH_BOUND_S: Final = 0.5  # a SIGKILLed supervisor's provider, on Linux
RACE_S: Final = 0.05  # a signal this close to the row closing (or the config write) raced it
INTERRUPTED: Final = 130
SIGNUMS: Final = {Sig.INT: 2, Sig.TERM: 15, Sig.KILL: 9}

# README: autotune's exit codes and the run row's exit reason of each.
AUTOTUNE_REASONS: Final = {
    0: "ok",
    2: "no_feasible",
    3: "budget_exhausted_no_model_selected",
    4: "budget_exhausted_with_partial_recommendation",
    64: "config_error",
    65: "pre_warm_integrity_failure",
    69: "provider_conflict",
    70: "internal_error",
    130: "interrupted",
}
OWNED_KEYS: Final = ("model", "kv_bits", "max_context_override", "max_concurrency_override")
TRACEBACK: Final = "Traceback (most recent call last)"
_OWNED_LINE: Final = re.compile(rf"^({'|'.join(OWNED_KEYS)})\s*:")


@dataclass(frozen=True)
class Sent:
    """A signal as it was sent: when (seconds after the start, and the wall clock) and whether
    the process had a handler for it at that moment."""

    signal: Sig
    at_s: float
    wall: datetime
    caught: bool


@dataclass(frozen=True)
class RunRow:
    run_id: str
    exit_reason: str | None  # None while open
    ended_at: datetime | None
    recommendation: Mapping[str, Any] | None  # {"model", "knobs": {...}} as the DB holds it


@dataclass(frozen=True)
class ConfigFacts:
    original: bytes | None  # None: there was no config
    now: bytes | None
    mtime: datetime | None
    strays: tuple[str, ...]  # files in its folder other than it and its backups
    backups: tuple[bytes, ...]


@dataclass(frozen=True)
class ServiceFacts:
    stops: int  # `systemctl --user stop` / `launchctl bootout` calls
    restores: int  # `systemctl --user start` / `launchctl bootstrap` calls


@dataclass(frozen=True)
class Facts:
    natural_code: int  # what the scenario exits with when left alone
    exit_code: int | None  # None: still running at the bound (then killed); -N: killed by N
    exit_s: float | None  # from the first signal (or the start, with none sent) to the exit
    exit_bound_s: float
    sent: tuple[Sent, ...]
    provider_seen: bool  # a provider of ours was running when the first signal was sent
    leftovers: tuple[str, ...]  # processes of ours alive LEFTOVER_BOUND_S after the exit
    death_s: float | None  # from the exit (SIGKILL: from the kill) to the last of ours gone
    provider_death_s: float | None  # SIGKILL only: until its provider was gone
    port_free: bool
    integrity: str | None  # PRAGMA integrity_check; None: no DB
    runs: tuple[RunRow, ...]
    config: ConfigFacts | None
    service: ServiceFacts | None  # autotune-drain only
    stderr: str
    notes: tuple[str, ...] = field(default=())


def failures(scenario: Scenario, facts: Facts, *, may_write: bool) -> list[str]:
    """Every broken invariant, one line each. `may_write`: the command was given `--apply`."""
    found = _process_failures(facts)
    killed = any(s.signal is Sig.KILL for s in facts.sent)
    if facts.exit_code is not None and not killed:
        if scenario is Scenario.RUN:
            found += _run_exit_failures(facts)
        else:
            found += _autotune_exit_failures(facts)
    if facts.config is not None:
        found += config_failures(facts.config, facts, may_write=may_write)
    if facts.service is not None:
        found += service_failures(facts.service, facts, killed=killed)
    return found


def _process_failures(facts: Facts) -> list[str]:
    found = []
    first = facts.sent[0].signal.value if facts.sent else "the start"
    if facts.exit_code is None:
        found.append(f"still running {facts.exit_bound_s:g} s after {first}: killed")
    if facts.leftovers:
        found.append(f"left running after the exit: {'; '.join(facts.leftovers)}")
    killed = any(s.signal is Sig.KILL for s in facts.sent)
    death = facts.provider_death_s
    if killed and death is not None and death > PROVIDER_DEATH_BOUND_S:
        found.append(
            f"provider outlived its SIGKILLed supervisor by {death:.2f} s"
            f" (bound {PROVIDER_DEATH_BOUND_S:g} s)"
        )
    if not facts.port_free:
        found.append("the port is still held after the exit")
    if facts.integrity not in (None, "ok"):
        found.append(f"DB integrity_check: {facts.integrity}")
    if TRACEBACK in facts.stderr:
        found.append(f"traceback on stderr: {_last_line(facts.stderr)}")
    return found


def _died_of_unhandled(facts: Facts) -> bool:
    """Killed by the first signal while it had no handler: the interpreter was starting."""
    first = facts.sent[0]
    return facts.exit_code == -SIGNUMS[first.signal] and not first.caught


def _killed_by(facts: Facts) -> str:
    """Why a death by signal is a failure: which of ours killed it, and whether it was
    handled when sent (a handler removed before the exit leaves the kernel's default)."""
    code = facts.exit_code or 0
    culprit = next((s for s in reversed(facts.sent) if SIGNUMS[s.signal] == -code), None)
    if culprit is None:
        return f"killed by signal {-code}, which we did not send"
    nth = "first" if culprit is facts.sent[0] else "second"
    handler = "had a handler when sent" if culprit.caught else "found no handler (removed?)"
    return f"killed by {culprit.signal.value}: the {nth}, at {culprit.at_s:.2f} s, {handler}"


def _run_exit_failures(facts: Facts) -> list[str]:
    code = facts.exit_code
    if not facts.sent:
        return [f"`run` exited on its own with {code}"] if code != facts.natural_code else []
    if _died_of_unhandled(facts):
        return []
    if code is not None and code < 0:
        return [_killed_by(facts)]
    second = len(facts.sent) > 1
    allowed = {0, INTERRUPTED} if second or not facts.provider_seen else {0}
    if code not in allowed:
        why = "" if second or not facts.provider_seen else " (its provider was already running)"
        return [f"exit {code} after {_signals(facts)}, expected {_either(allowed)}{why}"]
    return []


def _autotune_exit_failures(facts: Facts) -> list[str]:
    code = facts.exit_code
    row = facts.runs[-1] if facts.runs else None
    reason = row.exit_reason if row else None
    natural = facts.natural_code
    if not facts.sent:
        if code != natural:
            return [f"exit {code} without a signal, expected {natural}"]
        return _reason_failures(code, row, open_ok=False)
    if _died_of_unhandled(facts):
        return []
    if code is not None and code < 0:
        return [_killed_by(facts)]
    first = facts.sent[0]
    if code not in (INTERRUPTED, natural):
        return [f"exit {code} after {_signals(facts)}, expected {_either({INTERRUPTED, natural})}"]
    if code == natural and natural != INTERRUPTED and not finished_before(row, first):
        closed = "never closed" if row is None or row.ended_at is None else "closed after it"
        return [
            f"LOST SIGNAL: {first.signal.value} at {first.at_s:.2f} s, yet exit {code}"
            f" ({reason or 'no reason'}; the run row {closed})"
        ]
    if code == INTERRUPTED and row is None:
        lines = [line for line in facts.stderr.splitlines() if line.strip()]
        if len(facts.sent) == 1 and len(lines) != 1:
            return [f"stopped before the run row with {len(lines)} lines on stderr, expected 1"]
        return []
    return _reason_failures(code, row, open_ok=len(facts.sent) > 1)


def _reason_failures(code: int | None, row: RunRow | None, *, open_ok: bool) -> list[str]:
    expected = AUTOTUNE_REASONS.get(code) if code is not None else None
    if row is None:
        return [f"exit {code} but no run row"] if code in (0, 2, 3, 4) else []
    if row.exit_reason is None:
        return [] if open_ok else [f"exit {code} but the run row was left open"]
    if expected is not None and row.exit_reason != expected:
        return [f"exit {code} but the run row says {row.exit_reason}, expected {expected}"]
    return []


def finished_before(row: RunRow | None, sent: Sent) -> bool:
    """Whether the run row had closed before the signal was sent (within the race margin)."""
    if row is None or row.ended_at is None:
        return False
    return row.ended_at <= sent.wall + timedelta(seconds=RACE_S)


def config_failures(config: ConfigFacts, facts: Facts, *, may_write: bool) -> list[str]:
    found = [f"stray files beside the config: {', '.join(config.strays)}"] if config.strays else []
    if config.now == config.original:
        killed = any(s.signal is Sig.KILL for s in facts.sent)
        if config.backups and not killed:  # an `--apply` that gave up removes its backup
            found.append("a backup was left beside the unchanged config")
        return found
    if config.now is None:
        return [*found, "the config was deleted"]
    if not may_write:
        return [*found, "the config changed, and this command must not write it"]
    problem = new_config_problem(config.original, config.now, recommended(facts.runs))
    if problem is not None:
        return [*found, problem]
    if config.original is not None and config.original not in config.backups:
        found.append("the config was rewritten without a backup holding the original")
    stop = next((s for s in facts.sent if s.signal in STOP_SIGNALS), None)
    if stop is not None and config.mtime is not None:
        late = (config.mtime - stop.wall).total_seconds()
        if late > RACE_S:
            found.append(f"--apply wrote the config {late:.2f} s after {stop.signal.value}")
    return found


def recommended(runs: Sequence[RunRow]) -> dict[str, Any] | None:
    """The owned values `--apply` writes for the last run: None without a complete one."""
    row = runs[-1] if runs else None
    if row is None or row.exit_reason != "ok" or row.recommendation is None:
        return None
    return {"model": row.recommendation["model"], **row.recommendation["knobs"]}


def new_config_problem(
    original: bytes | None, now: bytes, values: Mapping[str, Any] | None
) -> str | None:
    """Why a rewritten config is not the complete new file, or None when it is: it parses,
    holds the recommendation's values (kv_bits None: absent), and keeps every other line of
    the original, byte for byte and in order."""
    try:
        parsed = yaml.safe_load(now.decode())
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        return f"the config is not valid YAML (partial?): {_last_line(str(error))}"
    if not isinstance(parsed, dict):
        return f"the config is not a mapping (partial?): {now[:60]!r}"
    if values is None:
        return "the config was rewritten, but the run has no complete recommendation"
    for key, value in values.items():
        if value is None and key in parsed:
            return f"the config holds {key}: {parsed[key]!r}, the recommendation removes it"
        if value is not None and parsed.get(key) != value:
            return f"the config holds {key}: {parsed.get(key)!r}, recommended {value!r}"
    missing = _lost_lines(original or b"", now)
    if missing:
        return f"the rewrite lost or reordered lines: {missing[0]!r}"
    return None


def _lost_lines(original: bytes, now: bytes) -> list[bytes]:
    """The original's non-owned lines that the new file does not keep in order."""
    kept = iter(now.splitlines(keepends=True))
    lost = []
    for line in original.splitlines(keepends=True):
        if _OWNED_LINE.match(line.decode(errors="replace")):
            continue
        if not any(candidate == line for candidate in kept):
            lost.append(line)
    return lost


def service_failures(service: ServiceFacts, facts: Facts, *, killed: bool) -> list[str]:
    found = []
    if service.stops > 1:
        found.append(f"the service was drained {service.stops} times")
    if service.restores > 1:
        found.append(f"the service was restored {service.restores} times")
    if service.restores > service.stops:
        found.append("the service was restored without having been drained")
    immediate = len(facts.sent) > 1  # a second signal skips the restore
    if service.stops and not killed and not immediate and service.restores != 1:
        found.append(f"drained, then restored {service.restores} times, expected once")
    return found


def _signals(facts: Facts) -> str:
    return " then ".join(f"{s.signal.value} at {s.at_s:.2f} s" for s in facts.sent)


def _either(codes: set[int]) -> str:
    return " or ".join(str(code) for code in sorted(codes))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
