"""`ops/load`: the counts of one run, its pass/fail rule, and how it is printed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from reliakit.load_verdict import SHAPES, RequestShape, Verdict

PROBLEMS_KEPT: Final = 50  # for --json; a broken server repeats itself
PROBLEMS_SHOWN: Final = 5
MB: Final = 1024 * 1024

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # bad answers, slots left taken, or no answer after the load
EXIT_USAGE: Final = 2  # argparse's own code for a bad flag
EXIT_NO_SERVER: Final = 3  # `serve` did not become ready, so nothing was measured
EXIT_INTERRUPTED: Final = 130


@dataclass
class Tally:
    """Requests counted by shape and status label; the first bad answers kept verbatim."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    bad: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, shape: RequestShape, verdict: Verdict) -> None:
        self.counts.setdefault(shape.label, Counter())[verdict.label] += 1
        if verdict.problem is not None:
            self.bad += 1
            if len(self.problems) < PROBLEMS_KEPT:
                self.problems.append(verdict.problem)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def by_status(self) -> Counter[str]:
        return sum(self.counts.values(), Counter())


@dataclass(frozen=True)
class Settings:
    """The run's knobs; `model` is the model folder's path."""

    seed: int
    clients: int
    seconds: float
    model: str
    max_batch: int
    max_queue: int
    disconnect: float


@dataclass(frozen=True)
class Aftermath:
    """What the server looked like once the load stopped. `slots_free_s` is how long the
    running and queued gauges took to reach 0 (None: they never did within the poll);
    `answer_problem` is why the normal request sent afterwards failed (None: it was fine)."""

    slots_free_s: float | None
    slots_seen: str
    answer_problem: str | None


@dataclass(frozen=True)
class Stopped:
    """How `serve` ended: its exit code (None: it ignored SIGTERM and was killed), how long
    the stop took, and whether it was still running when we sent SIGTERM (False: something
    else ended it during the run)."""

    code: int | None
    seconds: float
    by_us: bool


@dataclass(frozen=True)
class Report:
    settings: Settings
    tally: Tally
    elapsed_s: float
    rss_mb: tuple[float, float, float]  # start, peak, end
    after: Aftermath
    stopped: Stopped

    @property
    def passed(self) -> bool:
        after = self.after
        return self.tally.bad == 0 and after.slots_free_s is not None and not after.answer_problem


def exit_code(report: Report) -> int:
    return EXIT_OK if report.passed else EXIT_FAILED


def final_line(report: Report) -> str:
    line = f"load: {report.tally.bad} bad of {report.tally.total} requests"
    if report.after.slots_free_s is None:
        line += f"; slots not seen free ({report.after.slots_seen})"
    if report.after.answer_problem:
        line += "; no normal answer after the load"
    return line


def render(report: Report) -> str:
    s, tally, after = report.settings, report.tally, report.after
    rate = tally.total / report.elapsed_s if report.elapsed_s > 0 else 0.0
    start, peak, end = report.rss_mb
    rows = [
        ("seed", str(s.seed)),
        ("model", f"`{Path(s.model).name}`, `--max-batch {s.max_batch} --max-queue {s.max_queue}`"),
        ("clients", f"{s.clients}; {s.disconnect:.0%} of requests set to be cut mid-way"),
        ("seconds", f"{s.seconds:g} asked, {report.elapsed_s:.1f} until the last answer"),
        ("requests", f"{tally.total} ({rate:.1f}/s)"),
        *((_status_row(label), str(n)) for label, n in sorted(tally.by_status().items())),
        ("bad", _bad_cell(tally)),
        ("serve RSS start / peak / end", f"{start:.0f} / {peak:.0f} / {end:.0f} MB"),
        ("slots free after the load", _slots_cell(after)),
        ("normal request after the load", after.answer_problem or "answered"),
        ("`serve` exit on SIGTERM", _exit_cell(report.stopped)),
    ]
    table = ["| | |", "|---|---|", *(f"| {name} | {_cell_text(value)} |" for name, value in rows)]
    return "\n".join([*table, "", shape_table(tally)])


def shape_table(tally: Tally) -> str:
    """Requests by request shape (rows) and status label (columns)."""
    labels = sorted(tally.by_status())
    lines = [
        "| request | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for shape in SHAPES:
        counts = tally.counts.get(shape.label, Counter())
        lines.append(f"| {shape.label} | " + " | ".join(str(counts[x]) for x in labels) + " |")
    return "\n".join(lines)


def as_json(report: Report) -> dict[str, Any]:
    s, tally, after = report.settings, report.tally, report.after
    return {
        "settings": vars(s),
        "elapsed_s": report.elapsed_s,
        "requests": tally.total,
        "by_status": dict(tally.by_status()),
        "by_shape": {shape: dict(counts) for shape, counts in tally.counts.items()},
        "bad": tally.bad,
        "problems": tally.problems,
        "rss_mb": dict(zip(("start", "peak", "end"), report.rss_mb, strict=True)),
        "slots_free_s": after.slots_free_s,
        "slots_seen": after.slots_seen,
        "answer_problem": after.answer_problem,
        "serve_exit": vars(report.stopped),
        "passed": report.passed,
    }


def _status_row(label: str) -> str:
    return f"status {label}" if label[:1].isdigit() else label


def _bad_cell(tally: Tally) -> str:
    if not tally.bad:
        return "0"
    shown = "; ".join(tally.problems[:PROBLEMS_SHOWN])
    more = tally.bad - min(len(tally.problems), PROBLEMS_SHOWN)
    return f"**{tally.bad}**: {shown}" + (f"; and {more} more" if more else "")


def _slots_cell(after: Aftermath) -> str:
    if after.slots_free_s is None:
        return f"**no**: {after.slots_seen}"
    return f"yes, {after.slots_free_s:.1f} s after the last answer"


def _exit_cell(stopped: Stopped) -> str:
    if not stopped.by_us:
        return f"**had already exited**, with {stopped.code}: something else stopped it"
    if stopped.code is None:
        return f"still running after {stopped.seconds:.1f} s (killed)"
    return f"{stopped.code} in {stopped.seconds:.1f} s"


def _cell_text(text: str) -> str:
    """Text that cannot break a markdown table row."""
    return text.replace("|", "\\|").replace("\n", " ")
