"""What the chaos suite prints: a line per iteration, the final line, the JSON record of every
iteration, and the table docs/RELIABILITY.md keeps. Pure."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reliakit.chaos_checks import Facts
from reliakit.chaos_plan import SCENARIOS, Plan, Scenario, Sig, describe


@dataclass(frozen=True)
class Result:
    """One iteration (or, `plan` None, one calibration) and its verdict."""

    plan: Plan | None
    scenario: Scenario
    natural_s: float
    delay_s: float | None
    duration_s: float
    facts: Facts
    failures: tuple[str, ...]
    folder: str | None  # kept for a failed iteration, to look into


def _exit(facts: Facts) -> str:
    if facts.exit_code is None:
        return "no exit"
    took = f" after {facts.exit_s:.2f}s" if facts.exit_s is not None and facts.sent else ""
    return f"exit {facts.exit_code}{took}"


def _verdict(result: Result) -> str:
    return "ok" if not result.failures else f"FAIL ({len(result.failures)})"


def iteration_lines(result: Result) -> list[str]:
    """The iteration's line, then one indented line per failure (and where its files are)."""
    plan, facts = result.plan, result.facts
    if plan is None:
        head = (
            f"  calibrate {result.scenario.value}: natural {result.natural_s:.1f} s, {_exit(facts)}"
        )
    else:
        delay = result.delay_s or 0.0
        share = delay / result.natural_s if result.natural_s else 0.0
        sent = "" if facts.sent else " (not sent: already exited)"
        if facts.sent and plan.second is not None and len(facts.sent) < 2:
            sent = " (2nd not sent: already exited)"
        death = ""
        if facts.provider_death_s is not None:
            death = f", provider gone {facts.provider_death_s:.2f}s after the kill"
        head = (
            f"{plan.index:>4} {describe(plan):<52} at {delay:5.2f}s ({share:4.0%}){sent}"
            f"  {_exit(facts)}{death}"
        )
    lines = [f"{head}  {_verdict(result)}"]
    lines += [f"       - {failure}" for failure in result.failures]
    if result.failures and result.folder:
        lines.append(f"       files: {result.folder}")
    return lines


def failure_count(results: Sequence[Result]) -> int:
    return sum(1 for result in results if result.failures)


def summary_line(results: Sequence[Result], seed: int) -> str:
    iterations = sum(1 for result in results if result.plan is not None)
    failed = failure_count(results)
    noun = "failure" if failed == 1 else "failures"
    return f"chaos: {failed} {noun} in {iterations} iterations (seed {seed})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def records_json(results: Sequence[Result], seed: int) -> str:
    """Every iteration and calibration, with every fact (`--json FILE`)."""
    document = {
        "seed": seed,
        "failures": failure_count(results),
        "results": [dataclasses.asdict(result) for result in results],
    }
    return json.dumps(document, indent=2, default=_jsonable) + "\n"


def _cell(results: Sequence[Result]) -> str:
    if not results:
        return "–"
    failed = failure_count(results)
    return f"{len(results)}" + (f" ({failed} failed)" if failed else "")


def slowest_kill(results: Sequence[Result]) -> Result | None:
    """The SIGKILL iteration whose provider took longest to die."""
    timed = [r for r in results if r.plan is not None and r.facts.provider_death_s is not None]
    return max(timed, key=lambda r: r.facts.provider_death_s or 0.0, default=None)


def docs_body(results: Sequence[Result], seed: int, provenance: str) -> str:
    """docs/RELIABILITY.md's `chaos` section: by scenario and first signal, how many
    iterations and how many failed; the slowest provider death after SIGKILL; each failure."""
    runs = [result for result in results if result.plan is not None]
    signals = tuple(Sig)
    header = ["scenario", *(s.value for s in signals), "with a second signal", "all"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario in (*SCENARIOS, None):
        mine = [r for r in runs if scenario is None or r.scenario is scenario]
        cells = [_cell([r for r in mine if r.plan and r.plan.signal is s]) for s in signals]
        second = _cell([r for r in mine if r.plan and r.plan.second is not None])
        name = scenario.value if scenario is not None else "**all**"
        table.append("| " + " | ".join([name, *cells, second, _cell(mine)]) + " |")
    slowest = slowest_kill(results)
    death = (
        "no SIGKILL iteration ran a provider"
        if slowest is None or slowest.plan is None
        else f"{slowest.facts.provider_death_s:.2f} s (iteration {slowest.plan.index},"
        f" {slowest.scenario.value}); the bound is 0.5 s"
    )
    lines = [
        provenance,
        "",
        f"{len(runs)} iterations, seed {seed}: {failure_count(results)} failed"
        " (calibration runs included).",
        "",
        *table,
        "",
        f"Slowest provider death after SIGKILL of its supervisor: {death}.",
    ]
    failed = [result for result in results if result.failures]
    if failed:
        lines += ["", "Failures:", ""]
        for result in failed:
            what = describe(result.plan) if result.plan else f"calibrate {result.scenario.value}"
            where = f"{result.plan.index}" if result.plan else "-"
            lines.append(f"- {where} `{what}`: " + "; ".join(result.failures))
    return "\n".join(lines) + "\n"
